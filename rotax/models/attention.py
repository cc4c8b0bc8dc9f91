"""The attention arithmetic shared by the decoder's forward and the sampler's decode step:
scaled query-key scores in float32, masking, softmax. One mask value for both, so a prefill
and a decode step of the same tokens agree to float reassociation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: Score of a masked slot: far below any real score, yet finite (no NaN from ``inf - inf``
#: in a row whose every slot is masked, e.g. a padding row).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def scores(spec: str, q: jax.Array, k: jax.Array, head_dim: int) -> jax.Array:
    """``einsum(spec, q, k) / sqrt(head_dim)`` accumulated and returned in float32."""
    return jnp.einsum(spec, q, k.astype(q.dtype), preferred_element_type=jnp.float32) * head_dim ** -0.5


def masked(scores_: jax.Array, mask: jax.Array) -> jax.Array:
    """``scores_`` with :data:`MASK_VALUE` where ``mask`` (broadcast to it) is false."""
    return jnp.where(mask, scores_, MASK_VALUE)


def weights(scores_: jax.Array, mask: jax.Array, dtype) -> jax.Array:
    """Softmax over the last axis of the masked scores, cast to ``dtype``."""
    return jax.nn.softmax(masked(scores_, mask), axis=-1).astype(dtype)
