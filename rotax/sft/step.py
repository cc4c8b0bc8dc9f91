"""Supervised fine-tuning: masked token cross-entropy and one jitted, sharded train step.

The step is a single ``jax.jit`` with explicit in/out shardings over the mesh (the train state
by the canonical logical-axis rules, the batch split over ``("data", "fsdp")``), the state
donated. Gradient accumulation is a ``lax.scan`` over micro-batches inside that step: the loss
is the mean over *all* answer tokens of the batch, exactly as without accumulation.
The loop (checkpoints, evaluation, logging) is :func:`rotax.sft.loop.train`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rotax.runtime import sharding as sharding_lib
from rotax.models.config import ModelConfig
from rotax.models.decoder import apply, lm_logits
from rotax.sft.data import Batch
from rotax.training.train_state import TrainState, optimizer_config


def default_config() -> ml_collections.ConfigDict:
    """The ``sft`` section (study defaults, SPEC §2).

    num_steps, batch_size (sequences per optimizer step), grad_accum_steps (micro-batches per
    step; batch_size must divide by it), the optimizer keys of
    :func:`rotax.training.train_state.optimizer_config` (AdamW 0.9/0.98, eps 1e-7, wd 0, lr 1e-6, 3%
    linear warm-up then constant; ``schedule`` selects cosine/linear), checkpoint_every
    (steps; 0 = only the last), checkpoint_steps (explicit extra steps, each saved and
    evaluated — the study's uneven lists), checkpoint_initial (also save step 0), keep_checkpoints
    (0 = keep all), async_checkpointing, eval_every (steps between evaluation-hook calls,
    0 = never; make it a multiple of checkpoint_every so every evaluated step has a
    checkpoint), probe_every (loss on the ID/OOD probe sets), select_metric (the eval metric
    whose maximum marks ``sft_max_ood`` in the run metadata), eval_hands / eval_seeds /
    eval_batch_size (the GeneralPoints evaluation the ``rotax sft`` command runs: ID and OOD
    accuracy on the first eval_hands of each seeded 234-hand set), progress (tqdm bar).
    """
    config = optimizer_config()
    config.update({
        "num_steps": 1100,
        "batch_size": 64,
        "grad_accum_steps": 1,
        "checkpoint_every": 100,
        "checkpoint_initial": True,
        "checkpoint_steps": (),
        "keep_checkpoints": 0,
        "async_checkpointing": True,
        "eval_every": 100,
        "probe_every": 50,
        "select_metric": "ood_accuracy",
        "eval_hands": 234,
        "eval_seeds": (42,),
        "eval_batch_size": 32,
        "progress": True,
    })
    return config


class TrainBatch(NamedTuple):
    """What the jitted step consumes: micro-batches ``[A, b, ...]`` (A = accumulation steps).

    tokens int32 ``[A, b, S]``; attention_mask bool ``[A, b, S]``; positions int32
    ``[A, b, K]`` — the positions t whose next token t+1 is a target (answer token), padded
    with 0; weights float32 ``[A, b, K]`` — their loss weights (0 on padding entries).
    Logits are computed only at ``positions``: the LM head never runs on prompt or padding
    tokens (K is the bucketed largest answer, typically a fraction of S).
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray
    weights: np.ndarray


def target_positions(loss_mask: np.ndarray, bucket: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, weights)`` ``[..., K]`` from a ``[..., S]`` loss mask (host side).

    Position t is listed when ``loss_mask[..., t + 1] != 0`` (NaN weights are kept, so a bad
    weight still poisons the loss visibly). K is the largest count rounded up to ``bucket``
    (at most S - 1), so only a few shapes are ever compiled."""
    targets = loss_mask[..., 1:] != 0
    counts = targets.sum(-1)
    k = int(min(max(-(-int(counts.max(initial=1)) // bucket) * bucket, 1), loss_mask.shape[-1] - 1))
    flat_targets = targets.reshape(-1, targets.shape[-1])
    flat_mask = loss_mask[..., 1:].reshape(-1, targets.shape[-1])
    positions = np.zeros((flat_targets.shape[0], k), np.int32)
    weights = np.zeros((flat_targets.shape[0], k), np.float32)
    for row, (chosen, mask) in enumerate(zip(flat_targets, flat_mask)):
        index = np.flatnonzero(chosen)
        positions[row, :len(index)] = index
        weights[row, :len(index)] = mask[index]
    shape = loss_mask.shape[:-1] + (k,)
    return positions.reshape(shape), weights.reshape(shape)


def prepare_batch(batch: Batch, accum_steps: int = 1, bucket: int = 16) -> TrainBatch:
    """A source's ``[B, S]`` :class:`Batch` -> a :class:`TrainBatch` of ``accum_steps``
    micro-batches ``[accum_steps, B / accum_steps, ...]`` (row order kept)."""
    rows = batch.tokens.shape[0]
    if rows % accum_steps:
        raise ValueError(f"batch of {rows} rows does not split into {accum_steps} micro-batches")
    positions, weights = target_positions(batch.loss_mask, bucket)
    arrays = (batch.tokens, batch.attention_mask, positions, weights)
    return TrainBatch(*(np.reshape(x, (accum_steps, rows // accum_steps) + x.shape[1:]) for x in arrays))


def target_nll(model_cfg: ModelConfig, params, tokens, attention_mask, positions):
    """Next-token nll ``[b, K]`` (float32) of the tokens after ``positions``.

    tokens ``[b, S]``, attention_mask ``[b, S]``, positions ``[b, K]`` (see
    :class:`TrainBatch`). The decoder's final hidden states are gathered at ``positions``
    and only those ``[b, K, hidden]`` go through the LM head (float32 logits ``[b, K, V]``).
    Entries at padding positions are computed too; weight them out."""
    hidden = apply(model_cfg, params, tokens, kv_mask=attention_mask, return_logits=False).hidden
    picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)
    logits = lm_logits(model_cfg, params, picked)
    targets = jnp.take_along_axis(tokens, positions + 1, axis=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def loss_sums(model_cfg: ModelConfig, params, tokens, attention_mask, positions, weights):
    """``(Σ weight·nll, Σ weight)`` of next-token prediction on one micro-batch (see
    :func:`target_nll`). Returns two float32 scalars."""
    nll = target_nll(model_cfg, params, tokens, attention_mask, positions)
    weights = weights.astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


def loss_and_grads(model_cfg: ModelConfig, params, batch: TrainBatch):
    """``(loss, grads, answer_tokens)`` for a :class:`TrainBatch` ``[A, b, ...]`` (A may be 1).

    loss is the mean nll over all answer tokens of the batch; grads (float32, shaped like
    params) are its gradient. Traceable: call it inside ``jax.jit``."""
    value_and_grad = jax.value_and_grad(lambda p, *mb: loss_sums(model_cfg, p, *mb), has_aux=True)

    def micro(carry, mb):
        g_acc, s_acc, n_acc = carry
        (s, n), g = value_and_grad(params, *mb)
        g_acc = jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), g_acc, g)
        return (g_acc, s_acc + s, n_acc + n), None

    if batch.tokens.shape[0] == 1:
        (total, count), grads = value_and_grad(params, *(x[0] for x in batch))
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    else:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zero = jnp.zeros((), jnp.float32)
        (grads, total, count), _ = jax.lax.scan(micro, (zeros, zero, zero), tuple(batch))
    count = jnp.maximum(count, 1.0)
    return total / count, jax.tree.map(lambda g: g / count, grads), count


def micro_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of ``[A, b, ...]`` arrays: micro-batch rows split like
    :func:`rotax.runtime.sharding.batch_sharding` (over ``data`` × ``fsdp``), other axes replicated."""
    return NamedSharding(sharding_lib.canonical_mesh(mesh), P(None, *sharding_lib.batch_sharding(mesh, 2).spec))


def train_batch_shardings(mesh: Mesh) -> TrainBatch:
    micro = micro_batch_sharding(mesh)
    return TrainBatch(micro, micro, micro, micro)


def make_train_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, shardings: TrainState, *,
                    donate: bool = True, compiler_options: dict | None = None) -> Callable:
    """``step(state, batch) -> (state, metrics)``, one jitted function.

    batch is a :class:`TrainBatch` (see :func:`prepare_batch`);
    metrics are float32 scalars: loss, grad_norm (before clipping), learning_rate (of this
    update), answer_tokens, tokens (non-padding). ``state`` is donated. ``compiler_options``
    are XLA options for this jit (e.g. ``{"xla_backend_optimization_level": 0}`` compiles
    several times faster on CPU; tests use it)."""
    replicated = sharding_lib.replicated(mesh)

    def step(state: TrainState, batch: TrainBatch):
        loss, grads, count = loss_and_grads(model_cfg, state.params, batch)
        grads = jax.lax.with_sharding_constraint(grads, shardings.params)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                   "answer_tokens": count,
                   "tokens": jnp.sum(batch.attention_mask).astype(jnp.float32)}
        new_state = TrainState(state.step + 1, params, opt_state, jax.random.split(state.rng)[0])
        return new_state, metrics

    return jax.jit(step, in_shardings=(shardings, train_batch_shardings(mesh)),
                   out_shardings=(shardings, replicated), donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options)


def make_eval_loss(model_cfg: ModelConfig, mesh: Mesh, param_shardings,
                   compiler_options: dict | None = None) -> Callable:
    """``eval_loss(params, batch) -> (nll_sum, answer_tokens)`` for a :class:`TrainBatch`
    (any number of micro-batches), jitted."""

    def evaluate(params, batch: TrainBatch):
        sums = [loss_sums(model_cfg, params, *(x[i] for x in batch)) for i in range(batch.tokens.shape[0])]
        return sum(s for s, _ in sums), sum(n for _, n in sums)

    return jax.jit(evaluate, in_shardings=(param_shardings, train_batch_shardings(mesh)),
                   compiler_options=compiler_options)
