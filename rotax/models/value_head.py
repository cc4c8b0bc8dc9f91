"""The critic's value head: the study's MLP ``h → h/4 → ReLU → h/8 → ReLU → 1`` on the final
(post-norm) hidden state of the last prompt token.

It is a plain parameter subtree kept beside the canonical tree — PPO's params are
``{"policy": canonical tree, "value_head": init_value_head(...)}`` — so HF export (which takes
the canonical tree) drops it and the backbone is shared by actor and critic. Weights are in the
HF/PyTorch orientation ``[out, in]`` like every other matrix in rotax; float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LAYERS = ("fc1", "fc2", "fc3")


def value_head_sizes(hidden_size: int) -> tuple[int, int, int, int]:
    """``(h, h // 4, h // 8, 1)``: the input and output widths of the three layers."""
    if hidden_size < 8:
        raise ValueError(f"hidden_size {hidden_size} is too small for the h/4, h/8 value head")
    return hidden_size, hidden_size // 4, hidden_size // 8, 1


def init_value_head(hidden_size: int, key: jax.Array) -> dict:
    """Random value-head params as ``torch.nn.Linear`` initializes them: weight and bias
    ``U(-1/sqrt(in), 1/sqrt(in))``. Returns ``{"fc1": {"weight": [h/4, h], "bias": [h/4]},
    "fc2": {"weight": [h/8, h/4], ...}, "fc3": {"weight": [1, h/8], "bias": [1]}}``."""
    sizes = value_head_sizes(hidden_size)
    params = {}
    for name, fan_in, fan_out, k in zip(LAYERS, sizes[:-1], sizes[1:], jax.random.split(key, 3)):
        bound = 1.0 / math.sqrt(fan_in)
        kw, kb = jax.random.split(k)
        params[name] = {
            "weight": jax.random.uniform(kw, (fan_out, fan_in), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
        }
    return params


def apply_value_head(params: dict, hidden: jax.Array) -> jax.Array:
    """Values ``[...]`` float32 of hidden states ``[..., h]`` (computed in float32)."""
    x = hidden.astype(jnp.float32)
    for i, name in enumerate(LAYERS):
        layer = params[name]
        x = jnp.einsum("...i,oi->...o", x, layer["weight"].astype(jnp.float32)) + layer["bias"]
        if i < len(LAYERS) - 1:
            x = jax.nn.relu(x)
    return x[..., 0]
