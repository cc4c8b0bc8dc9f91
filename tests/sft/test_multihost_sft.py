"""Multi-host SFT: 2 processes × 4 CPU devices (``jax.distributed`` on localhost) produce the
same run as 1 process × 8 devices.

Both runs train a tiny random Llama for a few steps on one ``(1, 4, 2)`` mesh, with probe
losses, an evaluation hook that samples from the model (:func:`rotax.sampling.sampler.generate`) and
Orbax checkpoints. Compared: every row of ``metrics.jsonl`` (written once, by process 0), the
final params, and the last checkpoint — restored onto the multi-process mesh by the workers
and onto one device here.

The worker half of this file runs as ``python -m tests.sft.test_multihost_sft WORKER HF_DIR RUN_DIR``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import multihost

STEPS = 6
MESH_SHAPE = (1, 4, 2)
PROMPTS = [[5, 17, 33, 8], [40, 41], [9, 9, 9, 12, 70, 3], [88], [23, 54, 11],
           [6, 7, 8, 9, 10], [61, 2 + 60], [14, 15, 16]]
# -O0: several times faster to compile on CPU, the same float32 arithmetic.
XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
             "--xla_cpu_multi_thread_eigen=false")
TIMEOUT_S = 400  # both runs together: ~45 s on an idle 2-core machine
TOLERANCE = 1e-5  # relative; the two runs reduce over the same devices in possibly other orders






@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    import jax

    from rotax.runtime import sharding
    from rotax.io.checkpoint import CheckpointStore, restore_params
    from rotax.models.decoder import param_shapes
    from rotax.models.config import ModelConfig
    from tests.support import hf_fixtures

    hf_dir = hf_fixtures.llama(tmp_path / "llama", tied=False, layers=2)
    worker = ["-m", "tests.sft.test_multihost_sft", "WORKER"]
    start = time.monotonic()
    single, logs = multihost.run_with_reference(
        [*worker, str(hf_dir)], (tmp_path / "multi", tmp_path / "single"), xla_flags=XLA_FLAGS,
        timeout=TIMEOUT_S)
    seconds = time.monotonic() - start
    assert "batch sharded across processes: True" in logs[0], logs[0]
    for log in (*logs, single):
        assert "restored checkpoint 6 equals the final state" in log, log

    multi, one = multihost.metric_rows(tmp_path / "multi"), multihost.metric_rows(tmp_path / "single")
    assert multi.keys() == one.keys()
    steps = sorted({s for s, k in one if k == "train/loss"})
    assert steps == list(range(1, STEPS + 1))
    assert {k for _, k in one} >= {"train/loss", "train/grad_norm", "probe/id_loss",
                                    "eval/generated_tokens", "eval/logprob_sum"}
    errors = {key: multihost.relative_error(multi[key], one[key]) for key in one}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, multi[worst], one[worst])

    final_multi = np.load(tmp_path / "multi" / "final_params.npz")
    final_one = np.load(tmp_path / "single" / "final_params.npz")
    param_errors = {name: multihost.relative_error(final_multi[name], final_one[name])
                    for name in final_one.files}
    assert max(param_errors.values()) <= TOLERANCE, param_errors

    # The 2-process checkpoint restores here, on one device, to the 2-process final params.
    cfg = ModelConfig.from_hf_dir(hf_dir)
    device = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    shapes = param_shapes(cfg)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, sharding.param_shardings(shapes, device))
    assert CheckpointStore(tmp_path / "multi", "sft").steps() == [0, 3, 6]
    restored = restore_params(tmp_path / "multi" / "checkpoints" / "sft" / "6", abstract)
    for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
        np.testing.assert_array_equal(np.asarray(leaf), final_multi["/".join(k.key for k in path)])
    print(f"runs took {seconds:.1f}s; metrics max rel diff {errors[worst]:.2e} ({worst}); params {max(param_errors.values()):.2e}")


# ---------------------------------------------------------------- the worker


def _worker(hf_dir: str, run_dir: str) -> None:
    from rotax.runtime.distributed import maybe_initialize

    maybe_initialize()
    import jax

    from rotax.io import base_model
    from rotax import sampling
    from rotax.runtime import sharding
    from rotax.sft import loop as sft_loop
    from rotax.io.checkpoint import CheckpointStore
    from rotax.runtime.host import spans_processes, to_host
    from rotax.models.decoder import param_shapes
    from rotax.sft.step import micro_batch_sharding
    from rotax.training.train_state import abstract_train_state, make_optimizer
    from tests.support import sft_run_check

    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local / "
          f"{jax.device_count()} global devices", flush=True)
    mesh = sharding.make_mesh(MESH_SHAPE)
    print(f"batch sharded across processes: {not micro_batch_sharding(mesh).is_fully_addressable}",
          flush=True)
    config = sft_run_check.tiny_config(run_dir, hf_dir, STEPS, batch_size=16, grad_accum_steps=2,
                                       checkpoint_every=3, eval_every=3, probe_every=3,
                                       async_checkpointing=True)
    cfg = base_model.model_config(config.model, hf_dir)
    options = sampling.SamplingOptions(temperature=1.0, max_new_tokens=6)

    def eval_hook(params, step):
        generations = sampling.generate(cfg, params, PROMPTS, jax.random.key(7), options,
                                        eos_ids=[2], pad_id=0, mesh=mesh)
        return {"generated_tokens": sum(len(g.tokens) for g in generations),
                "token_sum": sum(int(g.tokens.sum()) for g in generations),
                "logprob_sum": sum(float(g.logprobs.sum()) for g in generations)}

    probes = {"id": [sft_run_check.random_batch(99, i, rows=16) for i in range(2)]}
    result = sft_loop.train(
        config, cfg, lambda: base_model.load_base(config.model, mesh, run_dir)[1],
        lambda seed, step: sft_run_check.random_batch(seed, step, rows=16), mesh=mesh,
        eval_hook=eval_hook, probe_sets=probes,
        compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
    q = result.state.params["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert spans_processes(q) == (jax.process_count() > 1), q.sharding
    final = sft_run_check._flat(to_host(result.state.params))

    # every process restores the last checkpoint onto the same (multi-process) mesh
    optimizer, _ = make_optimizer(config.sft, config.sft.num_steps)
    store = CheckpointStore(run_dir, "sft")
    step, state, metadata = store.restore_latest(abstract_train_state(param_shapes(cfg), optimizer, mesh))
    store.close()
    restored = sft_run_check._flat(to_host(state.params))
    assert step == STEPS and metadata["data_position"]["next_batch"] == STEPS, (step, metadata)
    for name, value in final.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    print(f"restored checkpoint {step} equals the final state", flush=True)
    if jax.process_index() == 0:
        np.savez(Path(run_dir) / "final_params.npz", **final)
    multihost.end_worker()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "WORKER":
        _worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tests.sft.test_multihost_sft WORKER HF_DIR RUN_DIR")
