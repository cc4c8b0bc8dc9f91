"""Generalized advantage estimation (GAE) by a reverse ``lax.scan``, and per-buffer advantage
normalization.

Time runs along axis 0; any trailing axes are independent streams (parallel environments).
``dones[t]`` marks that returns stop *after* step ``t`` (``dones = 1 - masks`` of the reference's
storage), so neither the value of step ``t + 1`` nor its advantage flows back into step ``t``.
rotax's own recipe marks every episode end (a solved hand or the attempt limit); the study's
reference marks only solved hands, so after its step limit GAE runs on into the next hand. Several episodes may follow each other along the time
axis of one stream (episode boundaries inside the buffer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZE_EPS = 1e-5


def gae(rewards: jax.Array, values: jax.Array, dones: jax.Array, last_value: jax.Array,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """``(advantages, returns)``, both ``[T, ...]`` float32.

    rewards, values ``[T, ...]``; dones ``[T, ...]`` (bool or 0/1); last_value ``[...]``: the
    value of the state after step ``T - 1`` (only used where ``dones[T - 1]`` is false).
    ``delta_t = r_t + gamma * V_{t+1} * (1 - d_t) - V_t``,
    ``A_t = delta_t + gamma * lam * (1 - d_t) * A_{t+1}``, ``returns = A + V``.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    alive = 1.0 - jnp.asarray(dones, jnp.float32)
    next_values = jnp.concatenate([values[1:], jnp.asarray(last_value, jnp.float32)[None]], axis=0)

    def step(carry, xs):
        reward, value, next_value, not_done = xs
        delta = reward + gamma * next_value * not_done - value
        advantage = delta + gamma * lam * not_done * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(step, jnp.zeros_like(values[0]),
                                 (rewards, values, next_values, alive), reverse=True)
    return advantages, advantages + values


def buffer_advantages(rewards: jax.Array, values: jax.Array, dones: jax.Array, valid: jax.Array,
                      gamma: float, lam: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(raw, returns, normalized)`` ``[N]`` for the rows of a PPO buffer (valid rows first):
    :func:`gae` with the padding rows' values taken as 0 (a last valid row that is not terminal
    bootstraps from 0) and no bootstrap after the buffer, then zeroed on padding, and the raw
    advantages normalized over the valid rows (:func:`normalize`)."""
    valid = jnp.asarray(valid, jnp.float32)
    raw, returns = gae(rewards, jnp.asarray(values, jnp.float32) * valid, dones,
                       jnp.zeros((), jnp.float32), gamma, lam)
    raw, returns = raw * valid, returns * valid
    return raw, returns, normalize(raw, valid)


def masked_mean_std(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and unbiased standard deviation (as ``torch.std``) of ``x`` where ``mask``; scalars."""
    mask = jnp.asarray(mask, jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(x * mask) / count
    var = jnp.sum(jnp.square(x - mean) * mask) / jnp.maximum(count - 1.0, 1.0)
    return mean, jnp.sqrt(var)


def masked_quantiles(x: jax.Array, mask: jax.Array, qs) -> jax.Array:
    """Quantiles ``qs`` of the entries of ``x`` ``[N]`` where ``mask``, interpolated linearly
    between order statistics (numpy's default method); ``[len(qs)]``, 0 when nothing is
    masked in. Masked-out entries sort to the end as +inf and are never indexed."""
    valid = jnp.asarray(mask, bool)
    ordered = jnp.sort(jnp.where(valid, x, jnp.inf))
    last = jnp.maximum(jnp.sum(valid) - 1, 0)
    position = jnp.asarray(qs, jnp.float32) * last
    lo = jnp.floor(position).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, last)
    frac = position - lo
    value = ordered[lo] * (1 - frac) + ordered[hi] * frac
    return jnp.where(jnp.any(valid), value, 0.0)


def normalize(advantages: jax.Array, mask: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
    """``(A - mean) / (std + eps)`` over the entries where ``mask`` (the whole buffer, as the
    study's reference does); masked-out entries become 0. Same shape as ``advantages``."""
    mean, std = masked_mean_std(advantages, mask)
    return jnp.where(jnp.asarray(mask, bool), (advantages - mean) / (std + eps), 0.0)
