"""PPO end to end on a task a tiny model learns fast; a NaN stops the run naming the update."""

import dataclasses

import jax
import numpy as np
import pytest

from rotax.rl import ppo
from rotax.rl.ppo import loop as ppo_loop
from rotax.io.checkpoint import CheckpointStore
from rotax.runtime.metrics import read_metrics
from rotax.models import decoder
from tests.support import ppo_fixtures as fx

# Both tests use the same settings, so the second reuses the first one's compiles.
SETTINGS = dict(clip_epsilon=0.2, max_new_tokens=1)


def test_ppo_raises_first_token_reward(tmp_path):
    config = fx.tiny_config(tmp_path / "run", **SETTINGS)
    cfg = fx.tiny_model_config()
    env = fx.FirstTokenEnvironment(config.ppo.episodes_per_update, fx.options(config))
    policy = decoder.init_params(cfg, jax.random.PRNGKey(0))
    result = ppo_loop.train(config, cfg, policy, env, pad_id=fx.PAD)
    rows = read_metrics(tmp_path / "run", "ppo")
    rewards = [r["train/reward_mean"] for r in rows]
    assert len(rewards) == config.ppo.num_updates
    # P(first token = TARGET) starts near 1/32; PPO must take it well above that.
    assert np.mean(rewards[:2]) < 0.15, rewards
    assert np.mean(rewards[-3:]) > 0.6, rewards
    for key in ("approx_kl", "clip_fraction", "value_loss", "explained_variance", "advantage_mean",
                "advantage_std", "advantage_skewness", "advantage_positive_share", "success_rate",
                "learning_rate", "sampler_logprob_gap"):
        assert np.isfinite(rows[-1][f"train/{key}"]), key
    # the sampler's log-probs and the learner's forward pass agree
    assert rows[0]["train/sampler_logprob_gap"] < 1e-4
    assert int(result.state.step) == config.ppo.num_updates
    assert set(result.state.params) == {"policy", "value_head"}


def test_nan_loss_stops_naming_the_update(tmp_path):
    config = fx.tiny_config(tmp_path / "run", checkpoint_every=1, **SETTINGS)
    cfg = fx.tiny_model_config()
    env = fx.FirstTokenEnvironment(config.ppo.episodes_per_update, fx.options(config), nan_at=2)
    policy = decoder.init_params(cfg, jax.random.PRNGKey(0))
    with pytest.raises(ppo_loop.NonFiniteLossError, match="update 3 of"):
        ppo_loop.train(config, cfg, policy, env, pad_id=fx.PAD)
    store = CheckpointStore(tmp_path / "run", "ppo", async_save=False)
    assert store.steps() == [1, 2]
    opt = ppo.OptimizerSettings.from_config(config.ppo)
    mesh = ppo_loop.mesh_from_config(config)
    step, state, _ = store.restore_latest(ppo.abstract_state(cfg, opt, mesh))
    store.close()
    assert step == 2 and int(state.step) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_reward_scale_equals_scaling_the_environment_rewards(tmp_path):
    # ppo.reward_scale=s on rewards r must train exactly like rewards s*r with scale 1 (GAE
    # and the value targets see the scaled rewards); logged rewards stay the environment's.
    cfg = fx.tiny_model_config()
    policy = decoder.init_params(cfg, jax.random.PRNGKey(0))

    class Scaled(fx.FirstTokenEnvironment):
        def play(self, cfg, params, key, update):
            rollout = super().play(cfg, params, key, update)
            turns = [dataclasses.replace(t, reward=0.25 * t.reward) for t in rollout.turns]
            return dataclasses.replace(rollout, turns=turns)

    results = {}
    for name, scale, env_cls in (("config", 0.25, fx.FirstTokenEnvironment), ("env", 1.0, Scaled)):
        config = fx.tiny_config(tmp_path / name, num_updates=1, reward_scale=scale, **SETTINGS)
        env = env_cls(config.ppo.episodes_per_update, fx.options(config))
        results[name] = ppo_loop.train(config, cfg, policy, env, pad_id=fx.PAD).state.params
    for a, b in zip(jax.tree.leaves(results["config"]), jax.tree.leaves(results["env"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(results["config"]), jax.tree.leaves(policy))]
    assert any(changed)
