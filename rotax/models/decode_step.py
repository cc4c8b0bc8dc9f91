"""One cache-friendly decode step (one new token per row) and the sampler's head-major cache.

Same arithmetic as :func:`rotax.models.decoder.apply` with a cache, arranged for speed: the
cache is head-major ``[.., B, kv_heads, T, head_dim]`` so attention is a plain batched matmul;
layers only *read* the cache and attend to the new key/value separately, and the new keys and
values are written in place afterwards. On CPU the layer loop is unrolled over per-layer
weights and caches, because XLA:CPU copies every ``lax.scan`` slice (each layer's weights and
cache) on every step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rotax.models import attention, decoder
from rotax.models.config import ModelConfig
from rotax.models.decoder import unroll_layers_by_default  # noqa: F401  (re-exported)
from rotax.models.layers import apply_rope, rope_cos_sin

class HeadMajorCache(NamedTuple):
    """The sampler's KV cache, head-major: ``k``, ``v`` are ``[L, B, kv_heads, T, head_dim]``
    arrays, or (with an unrolled layer loop) tuples of L ``[B, kv_heads, T, head_dim]`` arrays.

    Head-major (unlike :class:`rotax.models.decoder.KVCache`'s ``[L, B, T, kv_heads,
    head_dim]``) so one step's attention is a plain batched matmul over ``(B, kv_heads)``;
    with slots in the middle XLA:CPU transposes the whole cache every step (~8x slower)."""

    k: jax.Array | tuple
    v: jax.Array | tuple

    @classmethod
    def from_prefill(cls, cache: decoder.KVCache, length: int, *, per_layer: bool,
                     sharding=None) -> "HeadMajorCache":
        """The decoder's prefill cache ``[L, B, P, kv, hd]`` copied into slots ``0..P-1`` of an
        empty head-major cache of ``length`` slots (stacked, or one array per layer)."""
        def convert(x):
            x = x.transpose(0, 1, 3, 2, 4)  # [L, B, kv, P, hd]
            shape = (*x.shape[:3], length, x.shape[4])
            empty = jnp.zeros(shape[1:] if per_layer else shape, x.dtype)
            if sharding is not None:
                empty = jax.lax.with_sharding_constraint(empty, sharding)
            if per_layer:
                return tuple(jax.lax.dynamic_update_slice(empty, x[i], (0, 0, 0, 0)) for i in range(x.shape[0]))
            return jax.lax.dynamic_update_slice(empty, x, (0, 0, 0, 0, 0))
        return cls(convert(cache.k), convert(cache.v))


def _layer_step(cfg: ModelConfig, layer, h, cos, sin, valid, k_cache, v_cache, slot=None):
    """One decoder layer for one new token: h ``[B, 1, H]``; cache slabs ``[B, kv, T, hd]``.

    ``slot=None``: the slabs are only read and the token attends to its own key/value
    separately; returns ``(h, k, v)`` with this token's key/value ``[B, kv, 1, hd]``.
    Otherwise the key/value are first written to ``slot`` and attention reads the updated
    slabs (their only reader, so XLA updates them in place); returns ``(h, k_cache, v_cache)``.
    """
    b = h.shape[0]
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    attn = layer.self_attn
    a = layer.input_layernorm(h)
    q = apply_rope(attn.q_proj(a).reshape(b, 1, heads, head_dim), cos, sin)
    k = apply_rope(attn.k_proj(a).reshape(b, 1, kv_heads, head_dim), cos, sin)
    v = attn.v_proj(a).reshape(b, 1, kv_heads, head_dim)
    k = k.reshape(b, kv_heads, 1, head_dim).astype(k_cache.dtype)
    v = v.reshape(b, kv_heads, 1, head_dim).astype(v_cache.dtype)
    q = q.reshape(b, kv_heads, heads // kv_heads, head_dim)

    def scores(keys):  # [B, kv, g, T'] float32
        return attention.scores("bkgd,bktd->bkgt", q, keys, head_dim)

    if slot is None:
        old = attention.masked(scores(k_cache), valid[:, None, None, :])
        probs = jax.nn.softmax(jnp.concatenate([old, scores(k)], axis=-1), axis=-1).astype(h.dtype)
        out = jnp.einsum("bkgt,bktd->bkgd", probs[..., :-1], v_cache.astype(h.dtype))
        out = out + probs[..., -1:] * v.astype(h.dtype)
        new = (k, v)
    else:
        k_cache = jax.lax.dynamic_update_slice(k_cache, k, (0, 0, slot, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v, (0, 0, slot, 0))
        valid = valid | (jnp.arange(k_cache.shape[2]) == slot)[None, :]
        probs = attention.weights(scores(k_cache), valid[:, None, None, :], h.dtype)
        out = jnp.einsum("bkgt,bktd->bkgd", probs, v_cache.astype(h.dtype))
        new = (k_cache, v_cache)
    h = h + attn.o_proj(out.reshape(b, 1, heads * head_dim))
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return (h, *new)


def decode_step(cfg: ModelConfig, params, token, position, valid, cache: HeadMajorCache, slot,
                layers=None):
    """One decode step for one new token per row, cache-friendly.

    token ``[B]`` int32 at RoPE ``position`` ``[B]``, to be stored in cache slot ``slot``;
    valid ``[B, T]`` bool marks the cache slots this token may attend to besides itself
    (real prompt tokens and earlier generated slots, all ``< slot``). Same arithmetic as
    :func:`rotax.models.decoder.apply` with a cache, arranged so that a step never copies the
    cache. ``layers``: per-layer parameter states (a list, with a per-layer cache) for the
    unrolled loop — each layer writes its slab in place, then attends; or None for a
    ``lax.scan`` over the stacked layers that only reads the cache (attending to the new
    key/value separately) followed by one in-place write of all layers' new keys/values.
    Returns logits ``[B, V]`` float32 and the updated cache.
    """
    model = nnx.merge(decoder.graphdef(cfg), params)
    h = model.model.embed_tokens(token[:, None], jnp.dtype(cfg.dtype))  # [B, 1, H]
    cos, sin = rope_cos_sin(cfg, position[:, None])
    layer_def, layer_state = nnx.split(model.model.layers)
    if layers is None:
        def body(h, xs):
            state, k_old, v_old = xs
            h, k, v = _layer_step(cfg, nnx.merge(layer_def, state), h, cos, sin, valid, k_old, v_old)
            return h, (k, v)

        h, (k_new, v_new) = jax.lax.scan(body, h, (layer_state, cache.k, cache.v))
        # [L, B, kv, 1, hd] -> slot `slot` of every layer, in place
        cache = HeadMajorCache(jax.lax.dynamic_update_slice(cache.k, k_new, (0, 0, 0, slot, 0)),
                               jax.lax.dynamic_update_slice(cache.v, v_new, (0, 0, 0, slot, 0)))
    else:
        ks, vs = [], []
        for state, k_cache, v_cache in zip(layers, cache.k, cache.v):
            h, k_cache, v_cache = _layer_step(cfg, nnx.merge(layer_def, state), h, cos, sin, valid,
                                              k_cache, v_cache, slot)
            ks.append(k_cache)
            vs.append(v_cache)
        cache = HeadMajorCache(tuple(ks), tuple(vs))
    return model.logits(model.model.norm(h))[:, 0], cache
