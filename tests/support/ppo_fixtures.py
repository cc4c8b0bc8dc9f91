"""A tiny model and a one-turn task PPO learns in a few updates (shared by the PPO tests and
their subprocess scripts)."""

from __future__ import annotations

import numpy as np

from rotax.rl import ppo
from rotax.runtime import run_config
from rotax import sampling
from rotax.tasks.points.episodes import Turn
from rotax.models.config import ModelConfig
from rotax.rl.rollout import Rollout
from rotax.tasks.points.toy import toy_hf_config

VOCAB, EOS, PAD, TARGET = 32, 2, 0, 7


def tiny_model_config() -> ModelConfig:
    return ModelConfig.from_hf_dict(toy_hf_config(VOCAB, hidden=32, layers=2, heads=2, intermediate=64,
                                                  eos_token_id=EOS, bos_token_id=1, pad_token_id=PAD))


class FirstTokenEnvironment:
    """One-attempt episodes: a random prompt, reward 1 when the first generated token is
    ``TARGET``, else 0. ``nan_at``: the (0-based) update whose rewards are NaN."""

    def __init__(self, episodes: int, options: sampling.SamplingOptions, mesh=None, nan_at=None):
        self.episodes, self.options, self.mesh, self.nan_at = episodes, options, mesh, nan_at

    def play(self, cfg, params, key, update):
        rng = np.random.default_rng(update)
        prompts = [list(rng.integers(3, VOCAB, size=int(rng.integers(3, 9)))) for _ in range(self.episodes)]
        generations = sampling.generate(cfg, params, prompts, key, self.options, eos_ids=(EOS,),
                                        pad_id=PAD, mesh=self.mesh)
        turns = []
        for i, (prompt, g) in enumerate(zip(prompts, generations)):
            hit = bool(len(g.tokens) and g.tokens[0] == TARGET)
            reward = float("nan") if update == self.nan_at else float(hit)
            turns.append(Turn(i, 0, np.asarray(prompt, np.int32), g.tokens, g.logprobs, "", reward,
                              hit, True, g.truncated, "correct" if hit else "wrong", ""))
        return Rollout(turns, self.episodes, np.array([t.solved for t in turns]))


def tiny_config(run_dir, **ppo_overrides):
    """A run config whose ``ppo`` section suits the first-token task."""
    config = run_config.default_config()
    config.run_dir = str(run_dir)
    config.seed = 3
    config.ppo = ppo.default_config()
    config.ppo.update(dict(num_updates=12, episodes_per_update=32, attempts=1, temperature=1.0,
                           max_new_tokens=2, epochs=4, minibatch_size=16, microbatch_size=16,
                           learning_rate=1e-2, end_learning_rate=1e-3, max_grad_norm=1.0,
                           checkpoint_every=0, checkpoint_initial=False, eval_every=0,
                           async_checkpointing=False, progress=False, export_hf=False))
    config.ppo.update(ppo_overrides)
    return config


def options(config) -> sampling.SamplingOptions:
    return sampling.SamplingOptions(temperature=config.ppo.temperature,
                                    max_new_tokens=config.ppo.max_new_tokens)
