"""The PPO update: one ``jax.jit`` per update (SPEC §3).

GAE (γ, λ; returns stop where the buffer's ``dones`` say, padding rows count as value 0) over
the episode-major rows, advantages normalized over the
buffer, then ``epochs`` passes: valid rows shuffled (a key split from the train state's RNG),
split evenly into ``ceil(valid / minibatch_size)`` minibatches, each one optimizer step
(gradients accumulated over microbatches of ``microbatch_size`` rows; empty minibatch/microbatch
slots are skipped with ``lax.cond``). Optimizer: global-norm clipping, Adam(W), learning rate
``schedule(update)`` (:mod:`rotax.rl.ppo.state`). The old values and log-probs come from the
scoring pass (:mod:`rotax.rl.ppo.score`); the loss is :func:`rotax.rl.ppo.loss.ppo_loss`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rotax.rl import advantages as advantages_lib
from rotax.models.config import ModelConfig
from rotax.rl.ppo.loss import StepBatch, ppo_loss
from rotax.rl.ppo.score import Scores, buffer_shardings, chunk_rows, evaluate_steps, rows_sharding
from rotax.rl.ppo.state import learning_rate_schedule, make_optimizer, state_shardings
from rotax.rl.rollout import RolloutBuffer
from rotax.training.train_state import TrainState
from rotax.rl.ppo.config import OptimizerSettings, UpdateSettings
from rotax.runtime import sharding as sharding_lib



# the advantage distribution's shape per update (SPEC §3: the papers tie the window of SFT
# checkpoints PPO can restore to a flat advantage distribution); the report draws them as a fan
ADVANTAGE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def advantage_statistics(raw: jax.Array, mask: jax.Array) -> dict:
    """Mean, std, skewness, share positive and the :data:`ADVANTAGE_QUANTILES`
    (``advantage_p05`` …) of the raw (unnormalized) advantages ``[N]`` over ``mask``; float32
    scalars."""
    mean, std = advantages_lib.masked_mean_std(raw, mask)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    centered = (raw - mean) * mask
    m2 = jnp.sum(centered ** 2) / count
    m3 = jnp.sum(centered ** 3) / count
    quantiles = advantages_lib.masked_quantiles(raw, mask, ADVANTAGE_QUANTILES)
    return {"advantage_mean": mean, "advantage_std": std,
            "advantage_skewness": m3 / jnp.maximum(m2, 1e-12) ** 1.5,
            "advantage_positive_share": jnp.sum((raw > 0) * mask) / count,
            **{f"advantage_p{round(100 * q):02d}": v for q, v in zip(ADVANTAGE_QUANTILES, quantiles)}}


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 - Var(returns - values) / Var(returns)`` over ``mask`` (NaN-free: 0 when
    ``Var(returns)`` is 0)."""
    _, std_ret = advantages_lib.masked_mean_std(returns, mask)
    _, std_err = advantages_lib.masked_mean_std(returns - values, mask)
    var = std_ret ** 2
    return jnp.where(var > 0, 1.0 - std_err ** 2 / jnp.where(var > 0, var, 1.0), 0.0)


LOSS_METRICS = ("loss", "policy_loss", "value_loss", "entropy", "kl_to_reference", "approx_kl",
                "clip_fraction", "ratio", "grad_norm")


@functools.lru_cache(maxsize=16)
def make_update_fn(cfg: ModelConfig, settings: UpdateSettings, opt: OptimizerSettings, mesh: Mesh,
                   donate: bool = True) -> Callable:
    """``update(state, buffer, scores, update_index) -> (state, metrics, raw_advantages)``, one
    ``jax.jit`` (state donated; cached per arguments).

    metrics (float32 scalars): the loss pieces of :data:`LOSS_METRICS` averaged over all
    optimizer steps of the update (``*_last_epoch``: over the last epoch's), optimizer_steps,
    learning_rate, the advantage statistics, explained_variance, value_mean, return_mean.
    raw_advantages ``[N]`` (0 on padding) is for the histogram. ``state.step`` counts PPO
    updates; ``state.rng`` is split once per update."""
    s = settings
    micro, mb = s.microbatch_size, s.minibatch_size
    optimizer, schedule = make_optimizer(opt), learning_rate_schedule(opt)
    shardings = state_shardings(cfg, opt, mesh)
    replicated = sharding_lib.replicated(mesh)
    rows2 = rows_sharding(mesh, 2)

    def micro_loss(params, xs, row_count, token_count):
        tokens, mask, step_batch = xs
        r = step_batch.response_mask.shape[1]
        logp, entropy, value = evaluate_steps(cfg, params, tokens, mask, r, s.loss.temperature,
                                              with_entropy=True)
        return ppo_loss(logp, entropy, value, step_batch, s.loss, row_count, token_count)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def update(state: TrainState, buffer: RolloutBuffer, scores: Scores, update_index):
        n = buffer.tokens.shape[0]
        valid = buffer.row_mask
        raw, returns, normalized = advantages_lib.buffer_advantages(
            buffer.rewards * s.reward_scale, scores.values, buffer.dones, valid, s.gamma, s.gae_lambda)
        n_valid = jnp.sum(valid).astype(jnp.int32)
        active = jnp.maximum((n_valid + mb - 1) // mb, 1)
        max_minibatches = -(-n // mb)
        lr = jnp.asarray(schedule(update_index), jnp.float32)
        tokens_per_row = jnp.sum(buffer.response_mask, axis=1)
        rng, shuffle_key = jax.random.split(state.rng)

        def minibatch(carry, k, order):
            params, opt_state = carry
            start = (k * n_valid) // active
            end = ((k + 1) * n_valid) // active
            slots = start + jnp.arange(mb)
            slot_ok = (slots < end).astype(jnp.float32)
            idx = order[jnp.clip(slots, 0, n - 1)]
            row_count = jnp.sum(slot_ok)
            token_count = jnp.sum(tokens_per_row[idx] * slot_ok)

            def gather(i, ok):
                take = lambda x: jnp.take(x, i, axis=0)
                rm = take(valid) * ok
                step_batch = StepBatch(
                    token_weight=take(buffer.token_weight) * rm[:, None],
                    response_mask=take(buffer.response_mask) * rm[:, None],
                    old_logprob=take(scores.old_logprob), old_value=take(scores.values),
                    advantage=take(normalized), returns=take(returns), row_mask=rm,
                    ref_token_logprob=take(scores.ref_token_logprob))
                tokens = jax.lax.with_sharding_constraint(take(buffer.tokens), rows2)
                mask = jax.lax.with_sharding_constraint(take(buffer.attention_mask), rows2)
                return tokens, mask, step_batch

            def micro_step(acc, xs):
                i, ok = xs

                def run(acc):
                    grads_acc, sums_acc = acc
                    (loss, sums), grads = grad_fn(params, gather(i, ok), row_count, token_count)
                    grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
                    sums = dict(sums, loss=loss)
                    return grads_acc, {k: sums_acc[k] + sums[k] for k in sums_acc}

                return jax.lax.cond(jnp.any(ok > 0), run, lambda a: a, acc), None

            def step(carry):
                params, opt_state = carry
                zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
                sums0 = {k: jnp.zeros((), jnp.float32) for k in LOSS_METRICS if k != "grad_norm"}
                chunks = (chunk_rows(idx, micro), chunk_rows(slot_ok, micro))
                (grads, sums), _ = jax.lax.scan(micro_step, (zeros, sums0), chunks)
                grads = jax.lax.with_sharding_constraint(grads, shardings.params)
                grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
                grad_norm = optax.tree.norm(grads)
                direction, opt_state = optimizer.update(grads, opt_state, params)
                params = jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), params, direction)
                return (params, opt_state), dict(sums, grad_norm=grad_norm)

            def skip(carry):
                return carry, {k: jnp.zeros((), jnp.float32) for k in LOSS_METRICS}

            carry, sums = jax.lax.cond(k < active, step, skip, (params, opt_state))
            return carry, sums

        def epoch(carry, key):
            noise = jax.random.uniform(key, (n,))
            order = jnp.argsort(jnp.where(valid > 0, noise, 2.0))  # valid rows first, shuffled
            carry, sums = jax.lax.scan(functools.partial(minibatch, order=order), carry,
                                       jnp.arange(max_minibatches))
            return carry, {k: jnp.sum(v) for k, v in sums.items()}

        keys = jax.random.split(shuffle_key, s.epochs)
        (params, opt_state), per_epoch = jax.lax.scan(epoch, (state.params, state.opt_state), keys)
        steps = active.astype(jnp.float32)
        metrics = {k: jnp.sum(v) / (steps * s.epochs) for k, v in per_epoch.items()}
        metrics.update({f"{k}_last_epoch": v[-1] / steps for k, v in per_epoch.items()
                        if k in ("approx_kl", "clip_fraction", "policy_loss", "value_loss")})
        metrics.update(advantage_statistics(raw, valid))
        metrics.update(optimizer_steps=steps * s.epochs, learning_rate=lr,
                       explained_variance=explained_variance(scores.values, returns, valid),
                       value_mean=jnp.sum(scores.values * valid) / jnp.maximum(jnp.sum(valid), 1.0),
                       return_mean=jnp.sum(returns * valid) / jnp.maximum(jnp.sum(valid), 1.0))
        new_state = TrainState(state.step + 1, params, opt_state, rng)
        return new_state, metrics, raw

    scores_sharding = Scores(rows_sharding(mesh, 1), rows_sharding(mesh, 1), rows2, rows2)
    return jax.jit(update,
                   in_shardings=(shardings, buffer_shardings(mesh), scores_sharding, replicated),
                   out_shardings=(shardings, replicated, replicated),
                   donate_argnums=(0,) if donate else ())
