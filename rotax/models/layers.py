"""Flax NNX building blocks whose parameters carry HF names and HF orientation.

``Linear.weight`` is ``[out_features, in_features]`` exactly as in the PyTorch checkpoint, so a
parameter tree of these modules *is* the canonical tree (docs/architecture.md) and U/V of an SVD
mean what they mean in the study's PyTorch code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rotax.models.config import ModelConfig

_INIT_STD = 0.02


class Linear(nnx.Module):
    """y = x Wᵀ (+ b) with W of shape ``[out, in]`` (HF orientation)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        key = rngs.params()
        self.weight = nnx.Param(_INIT_STD * jax.random.normal(key, (out_features, in_features), dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...].astype(x.dtype)
        y = jnp.einsum("...i,oi->...o", x, w)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table ``[vocab, hidden]``."""

    def __init__(self, vocab: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(_INIT_STD * jax.random.normal(rngs.params(), (vocab, hidden), dtype))

    def __call__(self, tokens: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.weight[...], tokens, axis=0).astype(dtype)


class RMSNorm(nnx.Module):
    """RMS norm computed in float32, scaled after casting back (as transformers does)."""

    def __init__(self, hidden: int, *, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((hidden,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


def rope_inverse_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies ``[head_dim // 2]``, with Llama-3 scaling when configured."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * jnp.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_cos_sin(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape ``[B, S, head_dim]`` in HF's split-halves layout."""
    freqs = positions.astype(jnp.float32)[..., None] * rope_inverse_frequencies(cfg)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x [B, S, heads, head_dim]`` (rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :]
    sin = sin[:, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)
