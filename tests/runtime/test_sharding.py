"""Mesh construction, logical-axis rules, and sharded logits on 8 simulated devices."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

import rotax
from rotax.runtime import sharding
from tests.support import hf_fixtures


def test_mesh_shape_must_match_device_count():
    with pytest.raises(ValueError, match=r"does not match the 1 available devices"):
        sharding.make_mesh((1, 2, 1))
    assert sharding.make_mesh().shape == {"data": 1, "fsdp": 1, "tensor": 1}


def test_logical_axes_of_canonical_leaves():
    assert sharding.logical_axes(("model", "layers", "self_attn", "q_proj", "weight"), 3) == ("layers", "heads", "embed")
    assert sharding.logical_axes(("model", "layers", "mlp", "down_proj", "weight"), 3) == ("layers", "embed", "mlp")
    assert sharding.logical_axes(("model", "layers", "self_attn", "k_proj", "bias"), 2) == ("layers", "kv_heads")
    assert sharding.logical_axes(("model", "embed_tokens", "weight"), 2) == ("vocab", "embed")
    assert sharding.logical_axes(("model", "norm", "weight"), 1) == ("norm",)


def test_indivisible_dimension_is_replicated():
    devices = [jax.devices()[0]] * 1
    mesh = sharding.make_mesh((1, 1, 1), devices=devices)
    spec = sharding._spec(("vocab", "embed"), (7, 64), mesh)
    assert spec == P(None, None)


def test_sharded_logits_match_single_device(tmp_path):
    path = hf_fixtures.llama(tmp_path / "llama", tied=False)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.support.sharded_forward_check", str(path)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mesh (1, 4, 2)" in proc.stdout and "mesh (1, 8, 1)" in proc.stdout


def test_any_jax_mesh_on_eight_devices(tmp_path):
    """jax.make_mesh meshes (Explicit axis types, Auto, a subset of the axis names) through load,
    forward (also under jax.set_mesh), sampler, SFT, reset and analysis; a foreign axis name is
    refused naming the axes. Numbers are compared with 1 device inside the subprocess."""
    path = hf_fixtures.llama(tmp_path / "llama", tied=False)
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu",
               OMP_WAIT_POLICY="PASSIVE")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.support.any_mesh_check", str(path), str(tmp_path / "runs")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("explicit 1x4x2", "auto 2x2x2", "explicit fsdp,tensor 4x2"):
        assert f"{name}: forward" in proc.stdout, proc.stdout
    assert "refused: mesh axes ('x',)" in proc.stdout and "all meshes ok" in proc.stdout


def test_canonical_mesh_keeps_devices_and_makes_axes_auto():
    mesh = jax.make_mesh((1,), ("fsdp",))  # Explicit by default
    canonical = sharding.canonical_mesh(mesh)
    assert canonical.axis_names == sharding.MESH_AXES
    assert canonical.shape == {"data": 1, "fsdp": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in canonical.axis_types)
    assert canonical == sharding.make_mesh((1, 1, 1))
    with pytest.raises(ValueError, match=r"mesh axes \('tensor', 'data'\).*in that order"):
        sharding.canonical_mesh(jax.make_mesh((1, 1), ("tensor", "data")))
