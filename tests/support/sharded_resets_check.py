"""Run in a subprocess with 4 fake CPU devices: resets keep each leaf's input sharding."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from rotax.analysis import resets  # noqa: E402
from rotax.runtime import sharding
from rotax.analysis.selectors import Selector  # noqa: E402


def main():
    assert jax.device_count() == 4, jax.devices()
    mesh = sharding.make_mesh((1, 2, 2))
    rng = np.random.default_rng(0)

    def tree():
        q = rng.standard_normal((2, 8, 8)).astype(np.float32)
        e = rng.standard_normal((16, 8)).astype(np.float32)
        return {"model": {"embed_tokens": {"weight": jax.device_put(e, NamedSharding(mesh, P("tensor", "fsdp")))},
                          "layers": {"self_attn": {"q_proj": {"weight": jax.device_put(
                              q, NamedSharding(mesh, P(None, "tensor", "fsdp")))}}}}}

    target, reference = tree(), tree()
    for op in (resets.uv_merge, resets.triplet_swap, resets.sigma_only):
        out = op(target, reference, Selector(layers="1", modules="q,embed"), 3, 1)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(target)):
            assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
        single = op(jax.device_get(target), jax.device_get(reference),
                    Selector(layers="1", modules="q,embed"), 3, 1)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    out = resets.reset_layers(target, reference, "0")
    leaf = out["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert leaf.sharding.is_equivalent_to(
        target["model"]["layers"]["self_attn"]["q_proj"]["weight"].sharding, 3)
    np.testing.assert_array_equal(jnp.asarray(leaf[0]), reference["model"]["layers"]["self_attn"]["q_proj"]["weight"][0])
    print("sharding kept")


if __name__ == "__main__":
    main()
