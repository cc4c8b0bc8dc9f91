"""The PPO objective on one (micro)batch of time steps, as pure functions of arrays.

A time step is one model turn: its action is the whole response, and the action log-prob is the
weighted sum of the response tokens' log-probs at the rollout temperature,
``log π(a|s) = Σ_j w_j log softmax(logits_j / T)[a_j]`` (``w_j`` is 1, or the reference's 0.5 on
tokens before the ``formula`` key, and 0 on padding).

Loss (the study's reference, with rotax's optional terms)::

    ratio = exp(log π_new(a|s) - log π_old(a|s))
    policy_loss = mean_rows(-min(ratio · A, clip(ratio, 1 ± ε) · A))
    value_loss  = mean_rows(0.5 · max((V - R)², (V_old + clip(V - V_old, ±ε_v) - R)²))
    loss = policy_loss + value_coef · value_loss - entropy_coef · entropy + kl_coef · kl

``entropy`` and ``kl`` (to a frozen reference policy, per token, k1 or k3 estimator) are means
over response tokens. Means are sums divided by *given* counts, so a minibatch split into
microbatches gives the same loss and gradient as one pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")


class LossConfig(NamedTuple):
    """Static loss settings (hashable, so it can be a ``jax.jit`` static argument)."""

    clip_epsilon: float = 0.1
    value_clip_epsilon: float = 0.1
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    temperature: float = 0.2


class StepBatch(NamedTuple):
    """Per-row inputs of the loss; ``B`` rows, ``R`` response slots.

    token_weight ``[B, R]`` float32: ``w_j`` (0 on padding and on padded rows);
    response_mask ``[B, R]`` float32: 1 on real response tokens of valid rows;
    old_logprob ``[B]``: the rollout policy's weighted log-prob sum; old_value ``[B]``;
    advantage ``[B]`` (normalized); returns ``[B]``; row_mask ``[B]`` float32 (1 = real step);
    ref_token_logprob ``[B, R]``: the reference policy's token log-probs (zeros when unused).
    """

    token_weight: jax.Array
    response_mask: jax.Array
    old_logprob: jax.Array
    old_value: jax.Array
    advantage: jax.Array
    returns: jax.Array
    row_mask: jax.Array
    ref_token_logprob: jax.Array


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float,
                   with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs ``[B, R]`` of ``targets`` ``[B, R]`` under ``softmax(logits / temperature)``
    (logits ``[B, R, V]``, computed in float32) and, if asked, the per-token entropy ``[B, R]``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    chosen = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if not with_entropy:
        return chosen, None
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return chosen, entropy


def kl_per_token(logprob: jax.Array, ref_logprob: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π: ``k1 = log π - log π_ref``,
    ``k3 = exp(log π_ref - log π) - (log π_ref - log π) - 1`` (non-negative)."""
    if estimator == "k1":
        return logprob - ref_logprob
    if estimator == "k3":
        diff = ref_logprob - logprob
        return jnp.exp(diff) - diff - 1.0
    raise ValueError(f"kl_estimator {estimator!r}: choose one of {KL_ESTIMATORS}")


def ppo_loss(token_logprob: jax.Array, entropy: jax.Array | None, value: jax.Array,
             batch: StepBatch, config: LossConfig, row_count: jax.Array,
             token_count: jax.Array) -> tuple[jax.Array, dict]:
    """``(loss, sums)`` for one (micro)batch.

    token_logprob ``[B, R]``: the current policy's token log-probs at the rollout temperature;
    entropy ``[B, R]`` or None (needed only when ``entropy_coef != 0``); value ``[B]``;
    row_count, token_count: the number of valid rows / response tokens of the *whole* minibatch
    (means divide by them). ``sums`` holds the minibatch-normalized pieces (``policy_loss``,
    ``value_loss``, ``entropy``, ``kl``, ``approx_kl``, ``clip_fraction``, ``ratio``) so
    microbatch results add up.
    """
    rows = batch.row_mask
    tokens = batch.response_mask
    row_count = jnp.maximum(row_count, 1.0)
    token_count = jnp.maximum(token_count, 1.0)

    new_logprob = jnp.sum(token_logprob * batch.token_weight, axis=-1)
    log_ratio = (new_logprob - batch.old_logprob) * rows
    ratio = jnp.exp(log_ratio)
    eps = config.clip_epsilon
    surrogate = jnp.minimum(ratio * batch.advantage,
                            jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * batch.advantage)
    policy_loss = -jnp.sum(surrogate * rows) / row_count

    value_clipped = batch.old_value + jnp.clip(value - batch.old_value, -config.value_clip_epsilon,
                                               config.value_clip_epsilon)
    value_error = jnp.maximum(jnp.square(value - batch.returns), jnp.square(value_clipped - batch.returns))
    value_loss = 0.5 * jnp.sum(value_error * rows) / row_count

    loss = policy_loss + config.value_coef * value_loss
    if entropy is not None:
        mean_entropy = jnp.sum(entropy * tokens) / token_count
    else:
        mean_entropy = jnp.zeros((), jnp.float32)
    if config.entropy_coef:
        loss = loss - config.entropy_coef * mean_entropy
    if config.kl_coef:
        kl = jnp.sum(kl_per_token(token_logprob, batch.ref_token_logprob, config.kl_estimator)
                     * tokens) / token_count
        loss = loss + config.kl_coef * kl
    else:
        kl = jnp.zeros((), jnp.float32)

    ratio_ng = jax.lax.stop_gradient(ratio)
    log_ratio_ng = jax.lax.stop_gradient(log_ratio)
    sums = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": jax.lax.stop_gradient(mean_entropy),
        "kl_to_reference": jax.lax.stop_gradient(kl),
        "approx_kl": jnp.sum(((ratio_ng - 1.0) - log_ratio_ng) * rows) / row_count,
        "clip_fraction": jnp.sum((jnp.abs(ratio_ng - 1.0) > eps) * rows) / row_count,
        "ratio": jnp.sum(ratio_ng * rows) / row_count,
    }
    return loss, sums
