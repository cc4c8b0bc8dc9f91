"""Logit penalties that depend on the tokens a row has already seen.

:func:`apply_repetition_penalty` is the CTRL-style repetition penalty of Keskar et al. (2019) as
HF ``transformers`` applies it (``RepetitionPenaltyLogitsProcessor``, which Qwen2.5-Instruct's
``generation_config.json`` switches on with 1.05): every token id that occurs in the row's
prompt or in what it has generated so far has its logit divided by the penalty when positive
and multiplied by it when negative. It acts on the raw logits, before temperature, top-k and
top-p. :func:`seen_tokens` builds the ``[B, V]`` bitmap of a left-padded prompt batch; the
sampler marks each generated token in it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def seen_tokens(tokens: jax.Array, mask: jax.Array, vocab_size: int) -> jax.Array:
    """``[B, V]`` bool: which ids occur among the real (``mask``) tokens ``[B, P]`` of each row."""
    b = tokens.shape[0]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], tokens.shape)
    ids = jnp.where(mask, tokens, vocab_size)  # padding goes to an out-of-range id: dropped
    return jnp.zeros((b, vocab_size), bool).at[rows, ids].set(True, mode="drop")


def mark_seen(seen: jax.Array, token: jax.Array, alive: jax.Array) -> jax.Array:
    """``seen`` ``[B, V]`` with ``token`` ``[B]`` set in the rows that are still ``alive``."""
    b, v = seen.shape
    ids = jnp.where(alive, token, v)
    return seen.at[jnp.arange(b), ids].set(True, mode="drop")


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """``logits`` ``[B, V]`` with every ``seen`` id penalized: ``l / penalty`` where ``l > 0``,
    ``l * penalty`` otherwise. ``penalty`` 1 leaves them unchanged; float32 out."""
    logits = logits.astype(jnp.float32)
    penalized = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalized, logits)
