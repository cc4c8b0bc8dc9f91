"""Run in a subprocess with 8 simulated CPU devices: meshes built by ``jax.make_mesh`` (Explicit
axis types, its default; Auto; a subset of the axis names) through load, forward (also under
``jax.set_mesh``), the sampler, SFT steps, a reset and the spectral analysis — each compared
with the same computation on one device (PPO on such a mesh: tests/support/ppo_devices_check.py).
Prints one line per mesh.

Usage: python -m tests.support.any_mesh_check HF_DIR RUN_ROOT
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import rotax  # noqa: E402
from rotax.analysis import resets, spectral  # noqa: E402
from rotax.analysis.selectors import Selector  # noqa: E402
from rotax.sampling import sampler  # noqa: E402
from tests.support.sft_run_check import run_tiny, tiny_config  # noqa: E402

AXES = ("data", "fsdp", "tensor")


def meshes():
    return {
        "explicit 1x4x2": jax.make_mesh((1, 4, 2), AXES),  # jax's default: Explicit axis types
        "auto 2x2x2": jax.make_mesh((2, 2, 2), AXES, axis_types=(AxisType.Auto,) * 3),
        "explicit fsdp,tensor 4x2": jax.make_mesh((4, 2), ("fsdp", "tensor")),
    }


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_model(path, root):
    tokens = np.random.default_rng(0).integers(3, 90, (8, 24), dtype=np.int32)
    cfg, params = rotax.load_hf(path)
    reference = np.asarray(rotax.forward(cfg, params, tokens))
    prompts = [tokens[i, : 5 + i].tolist() for i in range(8)]
    options = sampler.SamplingOptions(temperature=0.0, max_new_tokens=6)
    want = sampler.generate(cfg, params, prompts, jax.random.key(0), options, eos_ids=[2])
    sft_ref = run_tiny(tiny_config(f"{root}/sft-1", path, 2, batch_size=8, checkpoint_initial=False,
                                   checkpoint_every=0),
                       mesh=rotax.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    for name, mesh in meshes().items():
        cfg, sharded = rotax.load_hf(path, mesh=mesh)
        q = sharded["model"]["layers"]["self_attn"]["q_proj"]["weight"]
        assert len({s.device for s in q.addressable_shards}) == 8, q.sharding
        err = rel(rotax.forward(cfg, sharded, tokens), reference)
        with jax.set_mesh(mesh):
            err_in = rel(rotax.forward(cfg, sharded, tokens), reference)
        assert err <= 1e-5 and err_in <= 1e-5, (name, err, err_in)
        got = sampler.generate(cfg, sharded, prompts, jax.random.key(0), options, eos_ids=[2], mesh=mesh)
        assert all(np.array_equal(g.tokens, w.tokens) for g, w in zip(got, want)), name
        result = run_tiny(tiny_config(f"{root}/sft-{name.replace(' ', '_')}", path, 2, batch_size=8,
                                      checkpoint_initial=False, checkpoint_every=0), mesh=mesh)
        sft_err = max(rel(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(result.state.params)),
                                                  jax.tree.leaves(jax.device_get(sft_ref.state.params))))
        assert sft_err <= 1e-5, (name, sft_err)
        tuned, tuned_ref = result.state.params, sft_ref.state.params
        selector = Selector(layers="all", modules="q,k")
        merged = resets.uv_merge(tuned, sharded, selector, 4, 2)
        single = resets.uv_merge(tuned_ref, params, selector, 4, 2)
        reset_err = max(rel(a, b) for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(single)))
        assert reset_err <= 1e-4, (name, reset_err)
        table = spectral.analyze(sharded, {"sft": tuned}, k=4, null_seeds=0).arrays
        table_ref = spectral.analyze(params, {"sft": tuned_ref}, k=4, null_seeds=0).arrays
        assert table.keys() == table_ref.keys() and table, name
        sigma_err = max(rel(table[k], table_ref[k]) for k in table if "sigma" in k)
        assert sigma_err <= 1e-4, (name, sigma_err)
        print(f"{name}: forward {err:.1e} (under set_mesh {err_in:.1e}), sampler identical, "
              f"sft {sft_err:.1e}, uv_merge {reset_err:.1e}, analysis sigma {sigma_err:.1e}", flush=True)


def check_refused():
    bad = jax.make_mesh((8,), ("x",))
    try:
        rotax.runtime.sharding.canonical_mesh(bad)
    except ValueError as err:
        assert "('x',)" in str(err) and "jax.make_mesh" in str(err), err
        print(f"refused: {err}", flush=True)
    else:
        raise AssertionError("a mesh with axis 'x' was accepted")


def main(path, root):
    assert jax.device_count() == 8, jax.devices()
    check_refused()
    check_model(path, root)
    print("all meshes ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
