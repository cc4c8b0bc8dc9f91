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
