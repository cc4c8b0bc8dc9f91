"""The PPO scoring pass: one forward pass over the rollout buffer with the pre-update params.

Per row it gives ``V(s_t)`` (value head on the last prompt token's final hidden state), the
action log-probs recomputed at the rollout temperature (as the study's reference does), and the
frozen reference policy's token log-probs when the KL penalty is on (:class:`Scores`).
:func:`evaluate_steps` is the shared forward of rows ``[prompt | response]`` that the update
(:mod:`rotax.rl.ppo.update`) differentiates.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from rotax.runtime import sharding as sharding_lib
from rotax.models import decoder
from rotax.models.config import ModelConfig
from rotax.rl.ppo.loss import token_logprobs
from rotax.rl.ppo.state import state_shardings
from rotax.rl.rollout import RolloutBuffer
from rotax.models.value_head import apply_value_head
from rotax.rl.ppo.config import OptimizerSettings, UpdateSettings



class Scores(NamedTuple):
    """Per-row results of the scoring pass, ``[N]`` / ``[N, R]`` float32: values (pre-update
    critic), old_logprob (weighted action log-prob of the pre-update policy), token_logprob
    (its token log-probs; meaningful where the response mask is set), ref_token_logprob
    (the reference policy's, likewise; zeros when KL is off)."""

    values: jax.Array
    old_logprob: jax.Array
    token_logprob: jax.Array
    ref_token_logprob: jax.Array


def evaluate_steps(cfg: ModelConfig, params: dict, tokens, attention_mask, response_length: int,
                   temperature: float, with_entropy: bool = False, with_value: bool = True):
    """``(token_logprob [B, R], entropy [B, R] | None, value [B] | None)`` of rows
    ``[prompt (left-padded, P slots) | response (R slots)]``.

    tokens ``[B, P + R]`` int32, attention_mask ``[B, P + R]`` bool; ``params`` is the PPO
    tree (``policy`` and, with ``with_value``, ``value_head``). The value reads the final
    hidden state at slot ``P - 1``; token ``P + j`` is scored by the logits at ``P + j - 1``
    (only those ``R`` positions go through the LM head). Traceable."""
    p = tokens.shape[1] - response_length
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1, dtype=jnp.int32) - 1, 0)
    out = decoder.apply(cfg, params["policy"], tokens, positions=positions,
                        kv_mask=attention_mask, return_logits=False)
    hidden = out.hidden[:, p - 1:-1]
    logits = decoder.lm_logits(cfg, params["policy"], hidden)
    logp, entropy = token_logprobs(logits, tokens[:, p:], temperature, with_entropy)
    value = apply_value_head(params["value_head"], out.hidden[:, p - 1]) if with_value else None
    return logp, entropy, value


def rows_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rank-``ndim`` arrays split on axis 0 over ``data`` × ``fsdp``."""
    return sharding_lib.batch_sharding(mesh, ndim)


def buffer_shardings(mesh: Mesh) -> RolloutBuffer:
    """Row-sharded (over ``data`` × ``fsdp``) placement of every buffer array."""
    rows1, rows2 = rows_sharding(mesh, 1), rows_sharding(mesh, 2)
    return RolloutBuffer(rows2, rows2, rows2, rows2, rows2, rows1, rows1, rows1)


def chunk_rows(x, size: int):
    """``[N, ...] -> [N / size, size, ...]``."""
    return x.reshape((x.shape[0] // size, size) + x.shape[1:])


@functools.lru_cache(maxsize=16)
def make_score_fn(cfg: ModelConfig, settings: UpdateSettings, opt: OptimizerSettings, mesh: Mesh,
                  with_reference: bool) -> Callable:
    """``score(params, ref_policy, buffer) -> Scores``, jitted (cached per arguments, so runs in
    one process share compiles). Rows are processed in chunks of
    ``microbatch_size`` (a ``lax.scan``; all-padding chunks skipped). ``ref_policy`` is the
    reference canonical tree, or None when ``with_reference`` is false."""
    micro = settings.microbatch_size
    temperature = settings.loss.temperature
    rows1, rows2 = rows_sharding(mesh, 1), rows_sharding(mesh, 2)

    def score(params, ref_policy, buffer: RolloutBuffer):
        r = buffer.response_mask.shape[1]
        n = buffer.tokens.shape[0]
        if n % micro:
            raise ValueError(f"buffer rows {n} are not a multiple of microbatch_size {micro}")

        def chunk(_, xs):
            tokens, mask, weight, row_mask = xs
            tokens = jax.lax.with_sharding_constraint(tokens, rows2)
            mask = jax.lax.with_sharding_constraint(mask, rows2)

            def run(_):
                logp, _, value = evaluate_steps(cfg, params, tokens, mask, r, temperature)
                if with_reference:
                    ref, _, _ = evaluate_steps(cfg, {"policy": ref_policy}, tokens, mask, r,
                                               temperature, with_value=False)
                else:
                    ref = jnp.zeros_like(logp)
                return value, logp, ref

            def skip(_):
                zeros = jnp.zeros(tokens.shape[:1] + (r,), jnp.float32)
                return jnp.zeros(tokens.shape[:1], jnp.float32), zeros, zeros

            value, logp, ref = jax.lax.cond(jnp.any(row_mask > 0), run, skip, None)
            return None, (value, logp, jnp.sum(logp * weight, axis=-1), ref)

        xs = tuple(chunk_rows(x, micro) for x in (buffer.tokens, buffer.attention_mask,
                                                  buffer.token_weight, buffer.row_mask))
        _, (values, token_logprob, old_logprob, ref) = jax.lax.scan(chunk, None, xs)
        flat = lambda x: x.reshape((n,) + x.shape[2:])
        return Scores(flat(values) * buffer.row_mask, flat(old_logprob) * buffer.row_mask,
                      flat(token_logprob), flat(ref))

    param_shardings = state_shardings(cfg, opt, mesh).params
    ref_sharding = param_shardings["policy"] if with_reference else None
    out = Scores(rows1, rows1, rows2, rows2)
    return jax.jit(score, in_shardings=(param_shardings, ref_sharding, buffer_shardings(mesh)),
                   out_shardings=out)
