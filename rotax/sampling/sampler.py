"""Batched generation inside one ``jax.jit``: prefill a left-padded batch, then decode over the
KV cache in a ``lax.while_loop`` until every row has emitted an EOS id or ``max_new_tokens``.

Sampling: greedy (``temperature == 0``) or softmax(logits / temperature) restricted to the
``top_k`` largest logits and then to the smallest set whose probability reaches ``top_p``. A
``repetition_penalty`` other than 1 first penalizes the logits of every id already in the row
(prompt and generated so far; :mod:`rotax.sampling.penalties`), as HF ``generate`` does.

**Log-probs.** ``SampleOutput.logprobs[b, i]`` is ``log_softmax(logits / temperature)`` of the
sampled token over the *full* vocabulary (not renormalized after top-k / top-p truncation) —
the log π at the rollout temperature that PPO recomputes from a forward pass. With greedy
decoding the temperature is taken as 1 (the model's plain log-probs). With a repetition penalty
they are taken after it, so PPO's recomputed log-probs (which, as the study's reference code,
ignore the penalty) differ from them; the PPO metric ``sampler_logprob_gap`` shows by how much.

**Randomness.** Row ``b`` draws with ``fold_in(fold_in(key, row_ids[b]), step)``, so a row's
sample depends on its ``row_id``, its prompt and the key — not on the other rows of the batch.

**Speed.** The decode step (:mod:`rotax.models.decode_step`) never copies the KV cache; sampling
draws one uniform per row (inverse CDF) and top-p avoids sorting the vocabulary.

**Compiles.** One per (batch, prompt bucket, max_new_tokens, greedy, top_k, top-p on/off);
temperature, top_p and the EOS ids are traced. :func:`left_pad` rounds prompt lengths up to a
few bucket sizes (two per octave) and :func:`generate` pads the batch to a fixed size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rotax.sampling import penalties
from rotax.models.decode_step import HeadMajorCache, decode_step, unroll_layers_by_default
from rotax.runtime.host import to_global, to_host
from rotax.runtime.sharding import batch_sharding, canonical_mesh
from rotax.models import decoder
from rotax.models.config import ModelConfig


class SampleOutput(NamedTuple):
    """tokens ``[B, N]`` int32 (``pad_id`` after the EOS); logprobs ``[B, N]`` float32 (0 where
    masked); mask ``[B, N]`` bool (generated tokens incl. the EOS); lengths ``[B]`` int32."""

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """``temperature`` 0 means greedy; ``top_k`` 0 and ``top_p`` 1.0 mean no truncation."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling options {self}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Generation(NamedTuple):
    """One row of :func:`generate`: ids ``[n]`` (incl. a final EOS unless ``truncated``) and
    their log-probs ``[n]``."""

    tokens: np.ndarray
    logprobs: np.ndarray
    truncated: bool


# ---------------------------------------------------------------- batches


def bucket_length(n: int, minimum: int = 16) -> int:
    """The smallest bucket ``>= n``: ``minimum`` or 2^k or 1.5 * 2^k (16, 24, 32, 48, 64, ...)."""
    size = max(minimum, 1)
    while size < n:
        power = 1 << (size.bit_length() - 1)
        size = power + power // 2 if size == power and power >= 2 else power * 2
    return size


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    """``(tokens [B, P] int32, mask [B, P] bool)``: each sequence right-aligned (left-padded).

    ``length`` defaults to :func:`bucket_length` of the longest sequence; ValueError if a
    sequence is empty or longer than ``length``."""
    longest = max((len(s) for s in sequences), default=0)
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot sample from an empty prompt")
    length = bucket_length(longest) if length is None else length
    if longest > length:
        raise ValueError(f"a prompt has {longest} tokens, more than length={length}")
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        if len(seq):
            tokens[row, length - len(seq):] = np.asarray(seq, np.int32)
            mask[row, length - len(seq):] = True
    return tokens, mask


def row_keys(key: jax.Array, row_ids) -> jax.Array:
    """Per-row keys ``[B]``: ``fold_in(key, row_id)``."""
    return jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.asarray(row_ids, jnp.uint32))


@functools.partial(jax.jit, static_argnames=("sharding",))
def _sharded_row_keys(key: jax.Array, row_ids, sharding) -> jax.Array:
    """:func:`row_keys` computed straight into ``sharding`` (a key array placed on one device
    cannot be ``device_put`` onto the devices of other processes)."""
    return jax.lax.with_sharding_constraint(row_keys(key, row_ids), sharding)


# ---------------------------------------------------------------- one step's choice


def categorical_by_inverse_cdf(keys, logits, block: int = 256):
    """One draw per row from softmax(logits ``[B, V]``) (``-inf`` = excluded) by inverse CDF:
    one uniform per row, a cumulative sum over blocks of ``block`` tokens, then within the
    chosen block. Same distribution as ``jax.random.categorical`` but it draws B numbers, not
    B×V Gumbels (which dominate a CPU decode step). Returns ``[B]`` int32."""
    b, v = logits.shape
    nb = -(-v // block)
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.pad(weights, ((0, 0), (0, nb * block - v))).reshape(b, nb, block)
    sums = jnp.sum(weights, axis=-1)  # [B, nb]
    cum = jnp.cumsum(sums, axis=-1)
    target = jax.vmap(lambda k: jax.random.uniform(k, dtype=jnp.float32))(keys) * cum[:, -1]
    last_block = nb - 1 - jnp.argmax((sums > 0)[:, ::-1], axis=-1)
    j = jnp.minimum(jnp.sum(cum <= target[:, None], axis=-1), last_block)
    before = jnp.take_along_axis(cum - sums, j[:, None], axis=-1)[:, 0]
    rest = jnp.maximum(target - before, 0.0)
    within = jnp.take_along_axis(weights, j[:, None, None], axis=1)[:, 0]  # [B, block]
    last = block - 1 - jnp.argmax((within > 0)[:, ::-1], axis=-1)
    i = jnp.minimum(jnp.sum(jnp.cumsum(within, axis=-1) <= rest[:, None], axis=-1), last)
    return (j * block + i).astype(jnp.int32)


def nucleus_threshold(scaled, top_p, candidates: int = 64):
    """Per row the smallest logit kept by top-p: the largest ``t`` with
    ``sum(p[scaled >= t]) >= top_p`` for p = softmax(scaled ``[B, V]``). Returns ``[B, 1]``.

    Fast path: when the ``candidates`` largest logits already hold ``top_p`` of the mass in
    every row (the usual case at rollout temperatures), the threshold is read off them.
    Otherwise: bisection on the float32 bit patterns of the probabilities (exact; 31 passes
    over V) — never a full-vocabulary sort, which is very slow on CPU."""
    weights = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # max weight is 1.0
    total = jnp.sum(weights, axis=-1, keepdims=True)
    values = jax.lax.top_k(scaled, min(candidates, scaled.shape[-1]))[0]  # sorted descending
    # (no slices of the top_k output: XLA:CPU then rewrites top_k as a full sort, ~100x slower)
    probs = jnp.exp(values - jnp.max(scaled, axis=-1, keepdims=True)) / total
    above = jnp.cumsum(probs, axis=-1) - probs
    fast = jnp.take_along_axis(values, jnp.sum(above < top_p, axis=-1, keepdims=True) - 1, axis=-1)

    def bisection():
        bits = jax.lax.bitcast_convert_type(weights, jnp.int32)  # monotone for weights >= 0

        def halve(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo + 1) // 2
            ok = jnp.sum(jnp.where(bits >= mid[:, None], weights, 0.0), axis=-1) >= top_p * total[:, 0]
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

        one = jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32)
        lo = jnp.zeros(scaled.shape[:1], jnp.int32)
        lo, _ = jax.lax.fori_loop(0, 31, halve, (lo, jnp.full_like(lo, one)))
        return jnp.min(jnp.where(bits >= lo[:, None], scaled, jnp.inf), axis=-1, keepdims=True)

    return jax.lax.cond(jnp.all(jnp.sum(probs, axis=-1) >= top_p), lambda: fast, bisection)


def choose_tokens(logits, keys, temperature, top_p, *, greedy: bool, top_k: int, use_top_p: bool):
    """Next tokens ``[B]`` int32 and their log-probs ``[B]`` from logits ``[B, V]`` float32.

    ``keys`` ``[B]`` (one per row). Top-k keeps the ``top_k`` largest logits (ties at the
    boundary kept); top-p then keeps the smallest set of the most likely remaining tokens whose
    (renormalized) probability reaches ``top_p``. See the module docstring for the log-prob."""
    if greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    scaled = logits / temperature
    logp = jax.nn.log_softmax(scaled, axis=-1)
    if top_k:
        values = jax.lax.top_k(scaled, min(top_k, scaled.shape[-1]))[0]  # sorted descending
        threshold = jnp.min(values, axis=-1, keepdims=True)  # not values[:, -1:] (see above)
        if use_top_p:
            probs = jax.nn.softmax(values, axis=-1)
            above = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate
            kept = jnp.sum(above < top_p, axis=-1, keepdims=True)  # >= 1
            threshold = jnp.take_along_axis(values, kept - 1, axis=-1)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    elif use_top_p:
        scaled = jnp.where(scaled < nucleus_threshold(scaled, top_p), -jnp.inf, scaled)
    token = categorical_by_inverse_cdf(keys, scaled)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


# ---------------------------------------------------------------- the jitted loop


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k",
                                             "use_top_p", "pad_id", "mesh", "unroll", "use_penalty"))
def _sample(params, tokens, mask, keys, temperature, top_p, eos, penalty=1.0, *, cfg, max_new_tokens,
            greedy, top_k, use_top_p, pad_id, mesh, unroll, use_penalty=False):
    b, p = tokens.shape
    n = max_new_tokens
    mask = mask.astype(bool)
    prompt_lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
    kv_mask = jnp.concatenate([mask, jnp.ones((b, n), bool)], axis=1)
    batch_spec = None if mesh is None else NamedSharding(mesh, P(None, ("data", "fsdp")))
    layer_spec = None if mesh is None else NamedSharding(mesh, P(("data", "fsdp")))
    choose = functools.partial(choose_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                               top_k=top_k, use_top_p=use_top_p)

    def emit(state, logits, step):
        out_tokens, out_logp, done, lengths, seen = state
        if use_penalty:
            logits = penalties.apply_repetition_penalty(logits, seen, penalty)
        token, logp = choose(logits, jax.vmap(lambda k: jax.random.fold_in(k, step))(keys))
        alive = ~done
        if use_penalty:
            seen = penalties.mark_seen(seen, token, alive)
        token = jnp.where(alive, token, pad_id)
        logp = jnp.where(alive, logp, 0.0)
        out_tokens = jax.lax.dynamic_update_slice(out_tokens, token[:, None], (0, step))
        out_logp = jax.lax.dynamic_update_slice(out_logp, logp[:, None], (0, step))
        done = done | (alive & jnp.isin(token, eos))
        return (out_tokens, out_logp, done, lengths + alive.astype(jnp.int32), seen), token

    # prefill: the decoder over the prompt with a prompt-sized cache, then the sampler's cache
    prefill_cache = decoder.init_cache(cfg, b, p)
    if batch_spec is not None:
        prefill_cache = jax.tree.map(lambda c: jax.lax.with_sharding_constraint(c, batch_spec), prefill_cache)
    out = decoder.apply(cfg, params, tokens, positions=positions, kv_mask=mask, cache=prefill_cache,
                        cache_index=0, return_logits=False)
    cache = HeadMajorCache.from_prefill(out.cache, p + n, per_layer=unroll,
                                        sharding=layer_spec if unroll else batch_spec)
    layers = None
    if unroll:  # per-layer weights, sliced once per call (not once per step)
        stacked = nnx.state(nnx.merge(decoder.graphdef(cfg), params).model.layers)
        layers = [jax.tree.map(lambda w, i=i: w[i], stacked) for i in range(cfg.num_layers)]
    logits = decoder.lm_logits(cfg, params, out.hidden[:, -1:])[:, 0]
    seen = penalties.seen_tokens(tokens, mask, logits.shape[-1]) if use_penalty else jnp.zeros((), bool)
    state = (jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
             jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32), seen)
    state, token = emit(state, logits, 0)

    def cond(carry):
        step, state, _, _ = carry
        return (step < n) & ~jnp.all(state[2])

    def body(carry):
        step, state, token, cache = carry
        slot = p + step - 1  # where `token` goes
        valid = kv_mask & (jnp.arange(p + n)[None, :] < slot)
        logits, cache = decode_step(cfg, params, token, prompt_lengths + step - 1, valid, cache, slot,
                                    layers)
        state, token = emit(state, logits, step)
        return step + 1, state, token, cache

    _, state, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), state, token, cache))
    out_tokens, out_logp, _, lengths, _ = state
    valid = jnp.arange(n)[None, :] < lengths[:, None]
    return SampleOutput(out_tokens, out_logp, valid, lengths)


def _eos_array(eos_ids: Sequence[int]) -> jax.Array:
    """EOS ids as a traced ``[8k]`` int32 array padded with -1 (no recompile per EOS set)."""
    ids = sorted(int(i) for i in eos_ids)
    if any(i < 0 for i in ids):
        raise ValueError(f"EOS ids must be >= 0, got {ids}")
    size = 8 * max(1, -(-len(ids) // 8))
    return jnp.asarray(ids + [-1] * (size - len(ids)), jnp.int32)


def _as(x, dtype):
    """``x`` in ``dtype``: a ``jax.Array`` stays one (no host round trip), anything else numpy."""
    return x.astype(dtype) if isinstance(x, jax.Array) else np.asarray(x, dtype)


def sample(cfg: ModelConfig, params, tokens, mask, key, options: SamplingOptions, *,
           eos_ids: Sequence[int], pad_id: int = 0, row_ids=None, mesh=None,
           unroll: bool | None = None) -> SampleOutput:
    """Generates up to ``options.max_new_tokens`` tokens after each left-padded prompt.

    tokens ``[B, P]`` int32 and mask ``[B, P]`` bool (see :func:`left_pad`; every row needs
    at least one real token); ``key`` a PRNG key; ``row_ids`` ``[B]`` ints (default
    ``0..B-1``) seed each row's randomness. With ``mesh`` the batch is sharded over
    ``("data", "fsdp")`` (B must divide evenly) and ``params`` should already be placed with
    :func:`rotax.runtime.sharding.param_shardings`. ``unroll`` (default
    :func:`unroll_layers_by_default`) picks the decode step's layer loop; with it, the call
    holds a second copy of the layer weights. Returns a :class:`SampleOutput` of device arrays.
    """
    row_ids = np.arange(np.shape(tokens)[0]) if row_ids is None else np.asarray(row_ids)
    mesh = None if mesh is None else canonical_mesh(mesh)
    if mesh is None:
        tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool)
        keys = row_keys(key, row_ids)
    else:  # rows split over ("data", "fsdp"), on every process of a multi-host mesh
        tokens, mask = to_global((_as(tokens, jnp.int32), _as(mask, bool)), batch_sharding(mesh))
        key_ndim = 1 + jax.eval_shape(lambda k: jax.random.fold_in(k, 0), key).ndim
        keys = _sharded_row_keys(key, np.asarray(row_ids, np.uint32), batch_sharding(mesh, key_ndim))
    return _sample(params, tokens, mask, keys, jnp.float32(options.temperature or 1.0),
                   jnp.float32(options.top_p), _eos_array(eos_ids), cfg=cfg, max_new_tokens=options.max_new_tokens,
                   greedy=options.greedy, top_k=options.top_k, use_top_p=options.top_p < 1.0,
                   pad_id=int(pad_id), mesh=mesh,
                   unroll=unroll_layers_by_default() if unroll is None else bool(unroll),
                   penalty=jnp.float32(options.repetition_penalty),
                   use_penalty=options.repetition_penalty != 1.0)


def generate(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], key,
             options: SamplingOptions, *, eos_ids: Sequence[int], pad_id: int = 0, row_ids=None,
             batch_size: int | None = None, mesh=None) -> list[Generation]:
    """:func:`sample` over a list of prompts (token id lists), in chunks of ``batch_size`` rows
    (the last chunk padded with copies of its first prompt, so every call has the same batch
    shape), prompt lengths bucketed. Returns one :class:`Generation` per prompt, in order."""
    if not prompts:
        return []
    row_ids = list(range(len(prompts))) if row_ids is None else list(row_ids)
    batch_size = batch_size or len(prompts)
    if mesh is not None:
        mesh = canonical_mesh(mesh)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        batch_size = math.ceil(batch_size / shards) * shards
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        ids = row_ids[start:start + batch_size]
        extra = batch_size - len(chunk)
        tokens, mask = left_pad(chunk + [chunk[0]] * extra, pad_id)
        out = sample(cfg, params, tokens, mask, key, options, eos_ids=eos_ids, pad_id=pad_id,
                     row_ids=ids + [ids[0]] * extra, mesh=mesh)
        out_tokens, out_logp, lengths = to_host((out.tokens, out.logprobs, out.lengths))
        eos = set(int(i) for i in eos_ids)
        for row in range(len(chunk)):
            n = int(lengths[row])
            ids_row = out_tokens[row, :n]
            truncated = n == 0 or int(ids_row[-1]) not in eos
            results.append(Generation(ids_row.copy(), out_logp[row, :n].copy(), truncated))
    return results
