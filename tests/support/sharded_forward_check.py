"""Run in a subprocess with 8 simulated CPU devices: logits on several meshes vs 1 device.

Usage: python -m tests.support.sharded_forward_check CHECKPOINT_DIR
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import rotax  # noqa: E402


def main(path):
    assert jax.device_count() == 8, jax.devices()
    tokens = np.random.default_rng(0).integers(0, 90, (8, 24), dtype=np.int32)
    cfg, params = rotax.load_hf(path)
    reference = np.asarray(rotax.forward(cfg, params, tokens))
    for shape in [(1, 4, 2), (1, 8, 1), (2, 2, 2)]:
        mesh = rotax.make_mesh(shape)
        cfg, sharded = rotax.load_hf(path, mesh=mesh)
        q = sharded["model"]["layers"]["self_attn"]["q_proj"]["weight"]
        # really distributed: each device holds 1/(fsdp*tensor) of the q projection
        assert q.addressable_shards[0].data.size * shape[1] * shape[2] == q.size, (shape, q.sharding)
        with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else jax.set_mesh(mesh):
            got = np.asarray(rotax.forward(cfg, sharded, tokens))
        err = np.max(np.abs(got - reference)) / np.max(np.abs(reference))
        assert err <= 1e-5, (shape, err)
        print(f"mesh {shape}: max rel diff {err:.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
