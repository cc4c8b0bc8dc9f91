"""The Llama / Qwen2 / Mllama-text decoder in Flax NNX, run as a pure function of its params.

Modules are defined with NNX; the hot path never calls ``nnx.jit``: :func:`apply` merges the
(cached) graphdef with a plain parameter dict inside whatever ``jax.jit`` the caller uses.
Layers are stacked on axis 0 and run with ``lax.scan`` (optionally rematerialized).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rotax.models import attention
from rotax.models.config import ModelConfig
from rotax.models.layers import Embed, Linear, RMSNorm, apply_rope, rope_cos_sin
from rotax.runtime.sharding import auto_axes_context, param_shardings

def unroll_layers_by_default() -> bool:
    """Whether the sampler's decode step loops over layers in Python: on CPU, where XLA copies
    every ``lax.scan`` slice (each layer's weights and cache) per step; elsewhere ``lax.scan``."""
    return jax.default_backend() == "cpu"


def unroll_forward_by_default() -> bool:
    """Whether :func:`apply` unrolls its layer scan: on a single CPU device, where XLA:CPU
    stacks every scan residual into zero-filled ``[L, ...]`` buffers and slices weights and
    residuals back per layer (12-25% of an SFT step, docs/performance.md). Not on several
    devices: there the rolled scan keeps the reduction order the multi-process SFT test pins
    (unrolled, AdamW amplified the reassociation of near-zero embedding gradients to 1.7e-5
    relative against its 1e-5 tolerance); nor on accelerators (one compiled layer)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


class KVCache(NamedTuple):
    """Keys and values for every stacked layer: ``[L, B, T, kv_heads, head_dim]`` each."""

    k: jax.Array
    v: jax.Array


class Output(NamedTuple):
    logits: jax.Array | None  # [B, S, vocab] float32
    hidden: jax.Array | None  # [B, S, hidden] final-norm output
    cache: KVCache | None


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        p = jnp.dtype(cfg.param_dtype)
        h = cfg.hidden_size
        self.q_proj = Linear(h, cfg.q_size, bias=cfg.attention_bias, dtype=p, rngs=rngs)
        self.k_proj = Linear(h, cfg.kv_size, bias=cfg.attention_bias, dtype=p, rngs=rngs)
        self.v_proj = Linear(h, cfg.kv_size, bias=cfg.attention_bias, dtype=p, rngs=rngs)
        self.o_proj = Linear(cfg.q_size, h, bias=cfg.output_bias, dtype=p, rngs=rngs)
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def __call__(self, x, cos, sin, mask, kv, cache_index):
        """x ``[B, S, H]``; mask ``[B, S, T]`` bool; kv: this layer's (k, v) cache or None."""
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(b, s, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, s, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            k_all = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, cache_index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, cache_index, 0, 0))
            new_kv = (k_all, v_all)
        else:
            k_all, v_all, new_kv = k, v, None
        groups = self.heads // self.kv_heads
        q = q.reshape(b, s, self.kv_heads, groups, self.head_dim)
        scores = attention.scores("bskgd,btkd->bkgst", q, k_all, self.head_dim)
        probs = attention.weights(scores, mask[:, None, None, :, :], x.dtype)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, v_all.astype(x.dtype))
        return self.o_proj(out.reshape(b, s, self.heads * self.head_dim)), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        p = jnp.dtype(cfg.param_dtype)
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(h, i, bias=False, dtype=p, rngs=rngs)
        self.up_proj = Linear(h, i, bias=False, dtype=p, rngs=rngs)
        self.down_proj = Linear(i, h, bias=False, dtype=p, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        p = jnp.dtype(cfg.param_dtype)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=p)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=p)

    def __call__(self, x, cos, sin, mask, kv, cache_index):
        attn, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, cache_index)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


class TextModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        p = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.embed_vocab_size, cfg.hidden_size, dtype=p, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stacked(rngs: nnx.Rngs):
            return DecoderLayer(cfg, rngs=rngs)

        self.layers = stacked(rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=p)

    def __call__(self, tokens, positions, kv_mask, cache: KVCache | None, cache_index):
        cfg = self.cfg
        x = self.embed_tokens(tokens, jnp.dtype(cfg.dtype))
        cos, sin = rope_cos_sin(cfg, positions)
        s = tokens.shape[1]
        q_slot = cache_index + jnp.arange(s)
        kv_slot = jnp.arange(kv_mask.shape[1])
        mask = (kv_slot[None, :] <= q_slot[:, None])[None] & kv_mask[:, None, :]
        layer_def, layer_state = nnx.split(self.layers)

        def body(h, xs):
            state, kv = xs
            h, new_kv = nnx.merge(layer_def, state)(h, cos, sin, mask, kv, cache_index)
            return h, new_kv

        if cfg.remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        kv_in = None if cache is None else (cache.k, cache.v)
        # unrolled on one CPU device: XLA:CPU stacks every scan residual into [L, ...] buffers (zero-filled,
        # then one dynamic-update-slice per layer) and slices them back in the backward pass
        x, kv_out = jax.lax.scan(body, x, (layer_state, kv_in), unroll=unroll_forward_by_default())
        new_cache = None if cache is None else KVCache(*kv_out)
        return self.norm(x), new_cache


class CausalLM(nnx.Module):
    """``model`` (embed, stacked layers, norm) and, unless tied, ``lm_head``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.model = TextModel(cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False,
                                  dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.cfg = cfg

    def logits(self, hidden: jax.Array) -> jax.Array:
        cfg = self.cfg
        if cfg.tie_word_embeddings:
            w = self.model.embed_tokens.weight[...][: cfg.vocab_size]
        else:
            w = self.lm_head.weight[...]
        return jnp.einsum("bsh,vh->bsv", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)


@functools.lru_cache(maxsize=32)
def graphdef(cfg: ModelConfig):
    """The NNX graph definition for ``cfg`` (built once, abstractly — no weights allocated)."""
    return nnx.graphdef(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))))


def param_shapes(cfg: ModelConfig) -> dict:
    """The canonical tree of ``jax.ShapeDtypeStruct`` for ``cfg`` (no allocation)."""
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def sharded_param_shapes(cfg: ModelConfig, mesh) -> dict:
    """:func:`param_shapes` with each leaf's sharding on ``mesh``: the target a checkpoint is
    restored into (``rotax.io.checkpoint.restore_params``)."""
    shapes = param_shapes(cfg)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, param_shardings(shapes, mesh))


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Random parameters (normal(0.02) matrices, unit norms, zero biases) as a canonical tree."""
    model = CausalLM(cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
    """An empty KV cache for ``batch`` rows of ``length`` slots."""
    shape = (cfg.num_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
    dtype = jnp.dtype(dtype or cfg.dtype)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def apply(cfg: ModelConfig, params: dict, tokens: jax.Array, *, positions=None, kv_mask=None,
          cache: KVCache | None = None, cache_index=0, return_logits: bool = True) -> Output:
    """Runs the decoder (traceable; call it inside your own ``jax.jit``).

    tokens ``[B, S]`` int32; positions ``[B, S]`` (default ``cache_index + 0..S-1``);
    kv_mask ``[B, T]`` bool marks real tokens among key/value slots (default all true);
    with ``cache`` the new keys/values go to slots ``cache_index .. cache_index + S - 1``.
    Returns logits ``[B, S, V]`` float32 (unless ``return_logits=False``), the final hidden
    state ``[B, S, H]`` and the updated cache.
    """
    with auto_axes_context():  # under jax.set_mesh(a jax.make_mesh mesh), too
        b, s = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(cache_index + jnp.arange(s, dtype=jnp.int32), (b, s))
        if kv_mask is None:
            length = s if cache is None else cache.k.shape[2]
            kv_mask = jnp.ones((b, length), bool)
        model = nnx.merge(graphdef(cfg), params)
        hidden, new_cache = model.model(tokens, positions, kv_mask, cache, cache_index)
        logits = model.logits(hidden) if return_logits else None
    return Output(logits, hidden, new_cache)


@functools.partial(jax.jit, static_argnums=0)
def lm_logits(cfg: ModelConfig, params: dict, hidden: jax.Array) -> jax.Array:
    """Float32 logits ``[..., V]`` of final-norm hidden states ``[..., H]`` (``apply``'s
    ``hidden``): the LM head alone, for callers that pick positions first."""
    return nnx.merge(graphdef(cfg), params).logits(hidden)


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg: ModelConfig, params: dict, tokens: jax.Array) -> jax.Array:
    """Logits ``[B, S, vocab]`` (float32) of a causal pass over ``tokens [B, S]`` int32 (jitted
    once per config and shape; ``apply`` is the traceable form)."""
    return apply(cfg, params, tokens).logits
