"""Tiny SFT runs in a subprocess (kill-and-resume, 8 simulated devices).

Usage:
    python -m tests.support.sft_run_check run RUN_DIR HF_DIR STEPS [--resume] [--out FILE.npz]
    python -m tests.support.sft_run_check meshes RUN_ROOT HF_DIR        (needs 8 devices)

``run`` prints ``batch <i>`` (flushed) when batch ``i`` is drawn, so a parent can kill it at a
chosen step; ``--out`` writes the final params as an npz.
"""

import os
import sys

import numpy as np

from rotax.sft.data import Batch, pack_examples


def random_batch(seed: int, step: int, *, rows: int = 8, bucket: int = 8, max_length: int = 32,
                 vocab: int = 96) -> Batch:
    """A batch of random prompt/answer examples: a pure function of ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    examples = []
    for _ in range(rows):
        prompt = rng.integers(3, vocab, int(rng.integers(4, 14))).tolist()
        answer = rng.integers(3, vocab, int(rng.integers(2, 8))).tolist() + [2]
        examples.append((prompt, answer))
    return pack_examples(examples, pad_id=0, bucket=bucket, max_length=max_length)


def tiny_config(run_dir, hf_dir, steps: int, **sft_changes):
    from rotax.io import base_model
    from rotax.runtime import run_config
    from rotax.sft import step as sft

    config = run_config.default_config()
    config.run_dir = str(run_dir)
    config.seed = 3
    config.model = base_model.default_config()
    config.model.path = str(hf_dir)
    config.sft = sft.default_config()
    config.sft.update(dict(num_steps=steps, batch_size=8, grad_accum_steps=2, learning_rate=1e-3,
                           warmup_steps=2, checkpoint_every=2, eval_every=0, probe_every=0,
                           progress=False))
    config.sft.update(sft_changes)
    return config


def run_tiny(config, mesh=None, resume=False, source=None, announce=False, compiler_options=None):
    from rotax.io import base_model
    from rotax.sft import loop as sft_loop

    cfg = base_model.model_config(config.model, config.model.path)
    rows = config.sft.batch_size

    def draw(seed, step):
        if announce:
            print(f"batch {step}", flush=True)
        return random_batch(seed, step, rows=rows)

    def load():
        return base_model.load_base(config.model, mesh or sft_loop.mesh_from_config(config), config.run_dir)[1]

    meta = {"model": {"source": str(config.model.path), "hf_config": cfg.hf_config,
                      "param_dtype": cfg.param_dtype, "compute_dtype": cfg.dtype}}
    return sft_loop.train(config, cfg, load, source or draw, mesh=mesh, resume=resume, run_metadata=meta,
                          compiler_options=compiler_options)


def _flat(tree):
    import jax

    return {"/".join(k.key for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def main_run(run_dir, hf_dir, steps, resume, out):
    result = run_tiny(tiny_config(run_dir, hf_dir, int(steps)), resume=resume, announce=True)
    if out:
        np.savez(out, **_flat(result.state.params))
    print("done", flush=True)


def main_meshes(root, hf_dir):
    import jax

    from rotax.io import base_model
    from rotax.runtime import sharding
    from rotax.io.checkpoint import CheckpointStore
    from rotax.training.train_state import host_params
    from rotax.training.train_state import abstract_train_state, make_optimizer

    assert jax.device_count() == 8, jax.devices()
    meshes = {"1x1x1": sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
              "1x4x2": sharding.make_mesh((1, 4, 2)), "2x4x1": sharding.make_mesh((2, 4, 1))}
    results = {}
    for name, mesh in meshes.items():
        config = tiny_config(f"{root}/{name}", hf_dir, 3, batch_size=16, checkpoint_initial=False,
                             checkpoint_every=0)
        result = run_tiny(config, mesh=mesh)
        q = result.state.params["model"]["layers"]["self_attn"]["q_proj"]["weight"]
        print(f"{name}: loss {result.metrics['loss']:.6f}, q_proj sharding {q.sharding.spec}", flush=True)
        results[name] = host_params(result.state)
    reference = _flat(results["1x1x1"])
    for name in ("1x4x2", "2x4x1"):
        for key, value in _flat(results[name]).items():
            err = np.max(np.abs(value - reference[key])) / max(np.max(np.abs(reference[key])), 1e-30)
            assert err <= 1e-5, (name, key, err)
        print(f"{name}: matches 1 device", flush=True)
    # Restore the 1x4x2 run's last checkpoint onto the 2x4x1 mesh: the same values.
    config = tiny_config(f"{root}/1x4x2", hf_dir, 3, batch_size=16)
    cfg = base_model.model_config(config.model, hf_dir)
    optimizer, _ = make_optimizer(config.sft, 3)
    abstract = abstract_train_state(jax.eval_shape(lambda: results["1x1x1"]), optimizer, meshes["2x4x1"])
    store = CheckpointStore(config.run_dir, "sft")
    step, state, _ = store.restore_latest(abstract)
    q = state.params["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert step == 3 and q.sharding.mesh.shape["data"] == 2, q.sharding
    for key, value in _flat(host_params(state)).items():
        np.testing.assert_array_equal(value, _flat(results["1x4x2"])[key])
    store.close()
    print(f"restored onto 2x4x1: identical ({cfg.architecture})", flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "run":
        out = args[args.index("--out") + 1] if "--out" in args else None
        main_run(args[0], args[1], args[2], "--resume" in args, out)
    elif mode == "meshes":
        main_meshes(args[0], args[1])
    else:
        raise SystemExit(f"unknown mode {mode}; see {os.path.basename(__file__)} docstring")
