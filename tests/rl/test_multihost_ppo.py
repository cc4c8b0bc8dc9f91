"""Multi-host PPO: 2 processes × 4 CPU devices (``jax.distributed`` on localhost) produce the
same run as 1 process × 8 devices.

Both runs do a few PPO updates (rollout → scoring pass → jitted update) of a tiny random Llama
on one ``(1, 4, 2)`` mesh, with the KL penalty on (a frozen reference copy), an evaluation hook
that samples from the policy, and Orbax checkpoints. The environment is a two-attempt task
(:class:`TwoAttemptEnvironment`) whose rollouts every process records.

Compared, in this order (so a failure says where the runs first parted):

1. the sampled tokens of every turn of every update — in the 2-process run on *both*
   processes (each must hold the same host rollout, since each places its own rows of the
   buffer from it) and in the 1-process run — exactly, reporting the first divergence;
2. every row of ``metrics.jsonl`` (written once, by process 0);
3. the final params (policy and value head), also as the change from the initial params;
4. the last checkpoint — restored onto the multi-process mesh by the workers (whole train
   state) and onto one device here (params).

The worker half of this file runs as ``python -m tests.rl.test_multihost_ppo WORKER HF_DIR SEED RUN_DIR``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import multihost

UPDATES = 3
SEED = 11
MESH_SHAPE = (1, 4, 2)
EPISODES = 16
ATTEMPTS = 2
MAX_NEW_TOKENS = 4
EOS, PAD = 2, 0
# Evaluation prompts: 16 rows of at most 16 tokens, so the hook reuses the rollout's compile.
EVAL_PROMPTS = [[5 + i, 17, 33 + i, 8][: 2 + i % 3] for i in range(16)]
# -O0 and the older fusion code generator: the PPO update compiles ~3x faster on CPU (the
# same flags in both runs, so the comparison is unaffected).
XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
             "--xla_cpu_multi_thread_eigen=false --xla_cpu_use_fusion_emitters=false")
TIMEOUT_S = 500  # both runs together: ~90 s on 2 cores shared with another test run
TOLERANCE = 1e-5  # relative; the two runs reduce over the same devices in possibly other orders






def _first_divergence(turns: list, reference: list) -> str | None:
    """Where two rollout records (lists of ``[update, attempt, hand, tokens, logprobs]``) first
    differ, or None when every turn has the same tokens."""
    for i, (a, b) in enumerate(zip(turns, reference)):
        if a[:3] != b[:3]:
            return f"turn {i}: (update, attempt, hand) {a[:3]} vs {b[:3]}"
        if a[3] != b[3]:
            return f"update {a[0]} attempt {a[1]} hand {a[2]}: tokens {a[3]} vs {b[3]}"
    if len(turns) != len(reference):
        return f"{len(turns)} turns vs {len(reference)}"
    return None


@pytest.mark.slow
def test_two_processes_train_ppo_like_one(tmp_path):
    import jax

    from rotax.rl import ppo
    from rotax.runtime import sharding
    from rotax.io.checkpoint import CheckpointStore, restore_params
    from rotax.models.config import ModelConfig
    from tests.support import hf_fixtures

    hf_dir = hf_fixtures.llama(tmp_path / "llama", tied=False, layers=2)
    worker = ["-m", "tests.rl.test_multihost_ppo", "WORKER"]
    start = time.monotonic()
    single, logs = multihost.run_with_reference(
        [*worker, str(hf_dir), str(SEED)], (tmp_path / "multi", tmp_path / "single"),
        xla_flags=XLA_FLAGS, timeout=TIMEOUT_S)
    seconds = time.monotonic() - start
    assert "buffer sharded across processes: True" in logs[0], logs[0]
    for log in (*logs, single):
        assert f"restored checkpoint {UPDATES} equals the final state" in log, log

    # 1. the rollouts: the same tokens on both processes and in the 1-process run
    turns = {(name, p): json.loads((tmp_path / name / f"rollouts_{p}.json").read_text())
             for name, p in (("single", 0), ("multi", 0), ("multi", 1))}
    one = turns[("single", 0)]
    assert len(one) >= UPDATES * EPISODES and {t[0] for t in one} == set(range(UPDATES)), len(one)
    assert any(t[1] == 1 for t in one), "no episode reached its second attempt"
    for name in (("multi", 0), ("multi", 1)):
        where = _first_divergence(turns[name], one)
        assert where is None, f"rollout of {name} differs from the 1-process run at {where}"
    logprob_error = max(multihost.relative_error(a[4], b[4])
                        for a, b in zip(turns[("multi", 0)], one) if b[4])
    assert logprob_error <= TOLERANCE, logprob_error

    # 2. every metrics row
    multi = multihost.metric_rows(tmp_path / "multi", "ppo")
    single_rows = multihost.metric_rows(tmp_path / "single", "ppo")
    assert multi.keys() == single_rows.keys()
    assert sorted({s for s, k in single_rows if k == "train/loss"}) == list(range(1, UPDATES + 1))
    assert {k for _, k in single_rows} >= {"train/loss", "train/grad_norm", "train/kl_to_reference",
                                           "train/value_loss", "train/reward_mean",
                                           "train/sampler_logprob_gap", "eval/token_sum",
                                           "eval/logprob_sum"}
    # A metric's error is relative to its largest magnitude over the run, but to no less than 1:
    # the PPO metrics are means of per-token or per-row terms of order one (normalized
    # advantages, ratios, log-probs, rewards), and those that cancel to small values (policy
    # loss ~0.02, KL ~1e-3, the sampler/scorer log-prob gap ~1e-7) keep only the absolute
    # precision of their terms.
    scale = {}
    for (_, key), value in single_rows.items():
        scale[key] = max(scale.get(key, 1.0), abs(value))
    errors = {k: abs(multi[k] - v) / scale[k[1]] for k, v in single_rows.items()}
    assert single_rows[(1, "train/sampler_logprob_gap")] < 1e-5  # sampler and scorer agree
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, multi[worst], single_rows[worst])
    rewards = [single_rows[(s, "train/reward_mean")] for s in range(1, UPDATES + 1)]
    assert 0 < min(rewards) and max(rewards) < 1, rewards  # turns both earn and miss the reward

    # 3. the final params, and what the updates changed
    final_multi = np.load(tmp_path / "multi" / "final_params.npz")
    final_one = np.load(tmp_path / "single" / "final_params.npz")
    initial = np.load(tmp_path / "single" / "initial_params.npz")
    initial_multi = np.load(tmp_path / "multi" / "initial_params.npz")  # checkpoint 0 of each run
    for name in initial.files:
        np.testing.assert_array_equal(initial_multi[name], initial[name], err_msg=name)
    assert set(final_multi.files) == set(final_one.files) == set(initial.files)
    param_errors = {name: multihost.relative_error(final_multi[name], final_one[name])
                    for name in final_one.files}
    assert max(param_errors.values()) <= TOLERANCE, param_errors
    moved = {name: float(np.max(np.abs(final_one[name] - initial[name]))) for name in initial.files}
    assert moved["policy/model/layers/self_attn/q_proj/weight"] > 0 and moved["value_head/fc3/weight"] > 0
    # the updates themselves agree, not only the weights: each leaf's difference relative to
    # the leaf's largest change over the run
    change_errors = {n: float(np.max(np.abs(final_multi[n] - final_one[n]))) / max(moved[n], 1e-30)
                     for n in initial.files}
    assert max(change_errors.values()) <= 1e-3, change_errors

    # 4. the 2-process checkpoint restores here, on one device, to the 2-process final params
    cfg = ModelConfig.from_hf_dir(hf_dir)
    device = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    shapes = ppo.abstract_ppo_params(cfg)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, sharding.param_shardings(shapes, device))
    assert CheckpointStore(tmp_path / "multi", "ppo").steps() == [0, 2, UPDATES]
    restored = restore_params(tmp_path / "multi" / "checkpoints" / "ppo" / str(UPDATES), abstract)
    for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
        np.testing.assert_array_equal(np.asarray(leaf), final_multi["/".join(k.key for k in path)])
    print(f"runs took {seconds:.1f}s; {len(one)} turns identical (sampler log-probs rel "
          f"{logprob_error:.1e}); metrics max diff {errors[worst]:.2e} ({worst}); params rel "
          f"{max(param_errors.values()):.2e}; their change {max(change_errors.values()):.2e}")


# ---------------------------------------------------------------- the worker


class TwoAttemptEnvironment:
    """Episodes of up to two turns on random prompts (tokens 3..95, a pure function of the
    update). A turn earns 1 when its first token is below 48, else 0; an unrewarded first turn
    is followed by a second whose prompt is the first prompt plus the first answer. Row ids
    are the episode indices and attempt ``a`` samples with ``fold_in(key, a)`` (as
    :mod:`rotax.tasks.points.episodes` does). ``record`` collects ``[update, attempt, episode, tokens,
    logprobs]`` of every turn."""

    def __init__(self, options, mesh):
        self.options, self.mesh, self.record = options, mesh, []

    def play(self, cfg, params, key, update):
        import jax

        from rotax import sampling
        from rotax.tasks.points.episodes import Turn
        from rotax.rl.rollout import Rollout

        rng = np.random.default_rng([SEED, update])
        prompts = {i: rng.integers(3, 96, size=int(rng.integers(3, 9))).tolist() for i in range(EPISODES)}
        turns, solved = [], np.zeros(EPISODES, bool)
        active = list(range(EPISODES))
        for attempt in range(ATTEMPTS):
            generations = sampling.generate(cfg, params, [prompts[i] for i in active],
                                            jax.random.fold_in(key, attempt), self.options,
                                            eos_ids=(EOS,), pad_id=PAD, row_ids=active,
                                            batch_size=EPISODES, mesh=self.mesh)
            following = []
            for i, g in zip(active, generations):
                hit = bool(len(g.tokens) and g.tokens[0] < 48)
                done = hit or attempt + 1 == ATTEMPTS
                solved[i] |= hit
                turns.append(Turn(i, attempt, np.asarray(prompts[i], np.int32), g.tokens, g.logprobs,
                                  "", float(hit), hit, done, g.truncated, "correct" if hit else "wrong", ""))
                self.record.append([update, attempt, i, [int(t) for t in g.tokens],
                                    [float(x) for x in g.logprobs]])
                if not done:
                    prompts[i] = prompts[i] + [int(t) for t in g.tokens if t != EOS]
                    following.append(i)
            active = following
            if not active:
                break
        return Rollout(turns, EPISODES, solved)


def _config(run_dir: str, hf_dir: str, seed: int):
    from rotax.io import base_model
    from rotax.rl import ppo
    from rotax.runtime import run_config

    config = run_config.default_config()
    config.run_dir = run_dir
    config.seed = seed
    config.model = base_model.default_config()
    config.model.path = hf_dir
    config.ppo = ppo.default_config()
    config.ppo.update(dict(num_updates=UPDATES, episodes_per_update=EPISODES, attempts=ATTEMPTS,
                           temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, epochs=2,
                           minibatch_size=16, microbatch_size=8, learning_rate=1e-4,
                           schedule="constant", max_grad_norm=1.0, kl_coef=0.05,
                           # Adam's eps: with the default 1e-7 a gradient element that nearly
                           # cancels to 0 still moves a whole ±lr, so its float rounding (the
                           # runs sum over devices in other orders) shows in the params: one
                           # element of 12,288 differed by 2.6% of a step; 1e-5 damps that.
                           eps=1e-5,
                           checkpoint_every=2, checkpoint_initial=True, eval_every=UPDATES,
                           async_checkpointing=True, progress=False, export_hf=False))
    return config


def _worker(hf_dir: str, seed: str, run_dir: str) -> None:
    from rotax.runtime.distributed import maybe_initialize

    maybe_initialize()
    import jax

    from rotax.io import base_model
    from rotax.rl import ppo
    from rotax.rl.ppo import loop as ppo_loop
    from rotax import sampling
    from rotax.runtime import sharding
    from rotax.io.checkpoint import CheckpointStore
    from rotax.runtime.host import spans_processes, to_host
    from tests.support import sft_run_check

    process = jax.process_index()
    print(f"process {process} of {jax.process_count()}: {jax.local_device_count()} local / "
          f"{jax.device_count()} global devices", flush=True)
    mesh = sharding.make_mesh(MESH_SHAPE)
    print(f"buffer sharded across processes: {not ppo.buffer_shardings(mesh).tokens.is_fully_addressable}",
          flush=True)
    config = _config(run_dir, hf_dir, int(seed))
    cfg = base_model.model_config(config.model, hf_dir)
    options = sampling.SamplingOptions(temperature=config.ppo.temperature,
                                       max_new_tokens=config.ppo.max_new_tokens)
    env = TwoAttemptEnvironment(options, mesh)

    def load_policy():
        return base_model.load_base(config.model, mesh, run_dir)[1]

    def eval_hook(policy, update):
        generations = sampling.generate(cfg, policy, EVAL_PROMPTS, jax.random.PRNGKey(7), options,
                                        eos_ids=[EOS], pad_id=PAD, mesh=mesh)
        return {"generated_tokens": sum(len(g.tokens) for g in generations),
                "token_sum": sum(int(g.tokens.sum()) for g in generations),
                "logprob_sum": sum(float(g.logprobs.sum()) for g in generations)}

    result = ppo_loop.train(config, cfg, load_policy, env, mesh=mesh, pad_id=PAD, eval_hook=eval_hook)
    q = result.state.params["policy"]["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert spans_processes(q) == (jax.process_count() > 1), q.sharding
    final_state = to_host(result.state)
    final = sft_run_check._flat(final_state.params)

    # every process restores the last checkpoint (the whole train state) onto the same mesh
    opt = ppo.OptimizerSettings.from_config(config.ppo)
    store = CheckpointStore(run_dir, "ppo")
    step, state, metadata = store.restore_latest(ppo.abstract_state(cfg, opt, mesh))
    initial_state, _ = store.restore(0, ppo.abstract_state(cfg, opt, mesh))  # before update 1
    initial = sft_run_check._flat(to_host(initial_state.params))
    store.close()
    assert step == UPDATES and metadata["data_position"]["next_update"] == UPDATES, (step, metadata)
    for a, b in zip(jax.tree.leaves(to_host(state)), jax.tree.leaves(final_state), strict=True):
        np.testing.assert_array_equal(a, b)
    print(f"restored checkpoint {step} equals the final state", flush=True)

    Path(run_dir, f"rollouts_{process}.json").write_text(json.dumps(env.record))
    if process == 0:
        np.savez(Path(run_dir) / "final_params.npz", **final)
        np.savez(Path(run_dir) / "initial_params.npz", **initial)
    multihost.end_worker()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "WORKER":
        _worker(*sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.rl.test_multihost_ppo WORKER HF_DIR SEED RUN_DIR")
