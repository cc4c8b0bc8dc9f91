"""Supervised fine-tuning: masked token cross-entropy and one jitted, sharded train step.

The step is a single ``jax.jit`` with explicit in/out shardings over the mesh (the train state
by the canonical logical-axis rules, the batch split over ``("data", "fsdp")``), the state
donated. Gradient accumulation is a ``lax.scan`` over micro-batches inside that step: the loss
is the mean over *all* answer tokens of the batch, exactly as without accumulation.
The loop (checkpoints, evaluation, logging) is :func:`rotax.sft_loop.train`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rotax import sharding as sharding_lib
from rotax.models.config import ModelConfig
from rotax.models.decoder import apply
from rotax.sft_data import Batch
from rotax.train_state import TrainState, optimizer_config


def default_config() -> ml_collections.ConfigDict:
    """The ``sft`` section (study defaults, SPEC §2).

    num_steps, batch_size (sequences per optimizer step), grad_accum_steps (micro-batches per
    step; batch_size must divide by it), the optimizer keys of
    :func:`rotax.train_state.optimizer_config` (AdamW 0.9/0.98, eps 1e-7, wd 0, lr 1e-6, 3%
    linear warm-up then constant; ``schedule`` selects cosine/linear), checkpoint_every
    (steps; 0 = only the last), checkpoint_initial (also save step 0), keep_checkpoints
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


def masked_cross_entropy_sums(logits: jax.Array, tokens: jax.Array,
                              loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Σ mask·nll, Σ mask)`` of next-token prediction.

    logits float32 ``[B, S, V]`` (position t predicts token t+1); tokens int32 ``[B, S]``;
    loss_mask ``[B, S]`` weights token t as a target (1 on answer tokens). Returns two
    float32 scalars: the weighted sum of negative log-likelihoods and the sum of weights."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    weights = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


def loss_sums(model_cfg: ModelConfig, params, tokens, loss_mask, attention_mask):
    """:func:`masked_cross_entropy_sums` of the decoder on one (micro-)batch ``[B, S]``."""
    logits = apply(model_cfg, params, tokens, kv_mask=attention_mask).logits
    return masked_cross_entropy_sums(logits, tokens, loss_mask)


def loss_and_grads(model_cfg: ModelConfig, params, batch: Batch):
    """``(loss, grads, answer_tokens)`` for a batch of micro-batches ``[A, b, S]`` (A may be 1).

    loss is the mean nll over all answer tokens of the batch; grads (float32, shaped like
    params) are its gradient. Traceable: call it inside ``jax.jit``."""
    value_and_grad = jax.value_and_grad(
        lambda p, t, m, a: loss_sums(model_cfg, p, t, m, a), has_aux=True)

    def micro(carry, mb):
        g_acc, s_acc, n_acc = carry
        (s, n), g = value_and_grad(params, *mb)
        g_acc = jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), g_acc, g)
        return (g_acc, s_acc + s, n_acc + n), None

    micro_batches = (batch.tokens, batch.loss_mask, batch.attention_mask)
    if batch.tokens.shape[0] == 1:
        (total, count), grads = value_and_grad(params, *(x[0] for x in micro_batches))
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    else:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zero = jnp.zeros((), jnp.float32)
        (grads, total, count), _ = jax.lax.scan(micro, (zeros, zero, zero), micro_batches)
    count = jnp.maximum(count, 1.0)
    return total / count, jax.tree.map(lambda g: g / count, grads), count


def micro_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of ``[A, b, S]`` batches: micro-batch rows split like
    :func:`rotax.sharding.batch_sharding` (over ``data`` × ``fsdp``), A and S replicated."""
    return NamedSharding(mesh, P(None, *sharding_lib.batch_sharding(mesh, 2).spec))


def split_micro_batches(batch: Batch, accum_steps: int) -> Batch:
    """``[B, S]`` host arrays -> ``[accum_steps, B / accum_steps, S]`` (row order kept)."""
    rows = batch.tokens.shape[0]
    if rows % accum_steps:
        raise ValueError(f"batch of {rows} rows does not split into {accum_steps} micro-batches")
    return Batch(*(np.reshape(x, (accum_steps, rows // accum_steps) + x.shape[1:]) for x in batch))


def make_train_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, shardings: TrainState, *,
                    donate: bool = True, compiler_options: dict | None = None) -> Callable:
    """``step(state, batch) -> (state, metrics)``, one jitted function.

    batch is a :class:`Batch` of ``[A, b, S]`` arrays (see :func:`split_micro_batches`);
    metrics are float32 scalars: loss, grad_norm (before clipping), learning_rate (of this
    update), answer_tokens, tokens (non-padding). ``state`` is donated. ``compiler_options``
    are XLA options for this jit (e.g. ``{"xla_backend_optimization_level": 0}`` compiles
    several times faster on CPU; tests use it)."""
    micro = micro_batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())

    def step(state: TrainState, batch: Batch):
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

    return jax.jit(step, in_shardings=(shardings, Batch(micro, micro, micro)),
                   out_shardings=(shardings, replicated), donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options)


def make_eval_loss(model_cfg: ModelConfig, mesh: Mesh, param_shardings,
                   compiler_options: dict | None = None) -> Callable:
    """``eval_loss(params, batch) -> (nll_sum, answer_tokens)`` for a ``[B, S]`` batch, jitted."""
    rows = sharding_lib.batch_sharding(mesh, 2)

    def evaluate(params, batch: Batch):
        return loss_sums(model_cfg, params, batch.tokens, batch.loss_mask, batch.attention_mask)

    return jax.jit(evaluate, in_shardings=(param_shardings, Batch(rows, rows, rows)),
                   compiler_options=compiler_options)
