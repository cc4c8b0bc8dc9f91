"""PPO for the revision episodes (SPEC §3): actor and critic share one backbone, the whole update
(GAE, advantage normalization, epochs × minibatches × microbatches) is one ``jax.jit``.

Params are ``{"policy": canonical tree, "value_head": value-head subtree}``
(:func:`init_ppo_params`); the sampler reads ``params["policy"]`` directly, so rollouts and the
learner share one copy of the weights. Per update:

1. :func:`make_score_fn` — one forward pass over the buffer with the pre-update params: values
   ``V(s_t)`` (value head on the last prompt token's final hidden state), the action log-probs
   recomputed at the rollout temperature (as the study's reference does), and the frozen
   reference policy's token log-probs when the KL penalty is on.
2. :func:`make_update_fn` — GAE (γ, λ; truncation = terminal) over the episode-major rows,
   advantages normalized over the buffer, then ``epochs`` passes: valid rows shuffled (a key
   split from the train state's RNG), split evenly into ``ceil(valid / minibatch_size)``
   minibatches, each one optimizer step (gradients accumulated over microbatches of
   ``microbatch_size`` rows; empty minibatch/microbatch slots are skipped with ``lax.cond``).
   Optimizer: global-norm clipping, Adam(W), learning rate ``schedule(update)`` — the schedule
   advances once per PPO update, like the reference's ``CosineAnnealingLR``.

The loop (rollouts, checkpoints, evaluation, logging) is :mod:`rotax.ppo_loop`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rotax import advantages as advantages_lib
from rotax import sharding as sharding_lib
from rotax.models import decoder
from rotax.models.config import ModelConfig
from rotax.ppo_losses import KL_ESTIMATORS, LossConfig, StepBatch, ppo_loss, token_logprobs
from rotax.rollout import RolloutBuffer
from rotax.train_state import TrainState, abstract_train_state, make_schedule, optimizer_config
from rotax.value_head import apply_value_head, init_value_head


def default_config() -> ml_collections.ConfigDict:
    """The ``ppo`` section (study defaults, SPEC §3).

    Rollouts: num_updates; episodes_per_update (hands per rollout, each a revision episode of
    up to ``attempts`` turns); rule (``id``/``ood``/``J,Q,K`` of the training hands);
    temperature, top_k, top_p, max_new_tokens (sampling; 512 as in the reference's RL runs);
    rollout_batch_size (rows per sampler call). Returns: gamma, gae_lambda.

    Update: epochs; minibatch_size (time steps per optimizer step; the valid steps are split
    evenly into ``ceil(steps / minibatch_size)`` minibatches); microbatch_size (rows per
    forward/backward; divides minibatch_size); clip_epsilon; value_clip_epsilon; value_coef;
    entropy_coef (bonus, default 0); kl_coef (per-token KL to the frozen initial policy,
    default 0 = off, no reference copy kept) with kl_estimator (``k1``/``k3``);
    pre_formula_weight (weight of response tokens before the formula key in the action
    log-prob; the reference uses 0.5) and formula_marker (``""``: the renderer's —
    ``"formula"`` for JSON, ``:`` for the compact form). Optimizer keys of
    :func:`rotax.train_state.optimizer_config` with the reference's values (Adam lr 1e-6,
    cosine to 1e-9 over num_updates, eps 1e-7, grad-norm clip 0.01).

    Loop: checkpoint_every (updates; 0 = only the last), checkpoint_initial,
    keep_checkpoints (0 = all), async_checkpointing, eval_every (updates; 0 = never),
    eval_hands, eval_seeds, eval_batch_size, stage (checkpoint/metrics stage name), export_hf
    (``rotax ppo`` writes the final policy as an HF directory, value head dropped), progress.
    """
    config = optimizer_config()
    config.update({
        "learning_rate": 1e-6, "schedule": "cosine", "warmup_steps": 0, "warmup_fraction": 0.0,
        "end_learning_rate": 1e-9, "b1": 0.9, "b2": 0.999, "eps": 1e-7, "weight_decay": 0.0,
        "max_grad_norm": 0.01,
    })
    config.update({
        "num_updates": 100,
        "episodes_per_update": 128,
        "attempts": 5,
        "rule": "id",
        "temperature": 0.2,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": 512,
        "rollout_batch_size": 64,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "epochs": 4,
        "minibatch_size": 128,
        "microbatch_size": 8,
        "clip_epsilon": 0.1,
        "value_clip_epsilon": 0.1,
        "value_coef": 0.5,
        "entropy_coef": 0.0,
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "pre_formula_weight": 1.0,
        "formula_marker": "",
        "checkpoint_every": 10,
        "checkpoint_initial": True,
        "keep_checkpoints": 0,
        "async_checkpointing": True,
        "eval_every": 10,
        "eval_hands": 234,
        "eval_seeds": (42,),
        "eval_batch_size": 32,
        "stage": "ppo",
        "export_hf": True,
        "progress": True,
    })
    return config


class UpdateSettings(NamedTuple):
    """The static (hashable) settings of one update, read from the ``ppo`` section."""

    loss: LossConfig
    gamma: float
    gae_lambda: float
    epochs: int
    minibatch_size: int
    microbatch_size: int

    @classmethod
    def from_config(cls, ppo) -> "UpdateSettings":
        if ppo.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"ppo.kl_estimator {ppo.kl_estimator!r}: choose one of {KL_ESTIMATORS}")
        if ppo.minibatch_size % ppo.microbatch_size:
            raise ValueError(f"ppo.minibatch_size={ppo.minibatch_size} is not a multiple of "
                             f"ppo.microbatch_size={ppo.microbatch_size}")
        if ppo.temperature <= 0:
            raise ValueError("ppo.temperature must be > 0 (log-probs are taken at it)")
        loss = LossConfig(clip_epsilon=float(ppo.clip_epsilon),
                          value_clip_epsilon=float(ppo.value_clip_epsilon),
                          value_coef=float(ppo.value_coef), entropy_coef=float(ppo.entropy_coef),
                          kl_coef=float(ppo.kl_coef), kl_estimator=str(ppo.kl_estimator),
                          temperature=float(ppo.temperature))
        return cls(loss, float(ppo.gamma), float(ppo.gae_lambda), int(ppo.epochs),
                   int(ppo.minibatch_size), int(ppo.microbatch_size))


class Scores(NamedTuple):
    """Per-row results of the scoring pass, ``[N]`` / ``[N, R]`` float32: values (pre-update
    critic), old_logprob (weighted action log-prob of the pre-update policy), token_logprob
    (its token log-probs; meaningful where the response mask is set), ref_token_logprob
    (the reference policy's, likewise; zeros when KL is off)."""

    values: jax.Array
    old_logprob: jax.Array
    token_logprob: jax.Array
    ref_token_logprob: jax.Array


# ---------------------------------------------------------------- params and optimizer


class OptimizerSettings(NamedTuple):
    """The optimizer keys of the ``ppo`` section (hashable; also readable by
    :func:`rotax.train_state.make_schedule`) and the number of updates the schedule spans."""

    learning_rate: float
    schedule: str
    warmup_fraction: float
    warmup_steps: int
    end_learning_rate: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    max_grad_norm: float
    num_updates: int

    @classmethod
    def from_config(cls, ppo) -> "OptimizerSettings":
        return cls(float(ppo.learning_rate), str(ppo.schedule), float(ppo.warmup_fraction),
                   int(ppo.warmup_steps), float(ppo.end_learning_rate), float(ppo.b1),
                   float(ppo.b2), float(ppo.eps), float(ppo.weight_decay),
                   float(ppo.max_grad_norm), int(ppo.num_updates))


def init_ppo_params(cfg: ModelConfig, policy_params: dict, key: jax.Array) -> dict:
    """``{"policy": policy_params, "value_head": init_value_head(hidden, key)}``."""
    return {"policy": policy_params, "value_head": init_value_head(cfg.hidden_size, key)}


def abstract_ppo_params(cfg: ModelConfig) -> dict:
    """``{"policy": canonical shapes, "value_head": shapes}`` as ``jax.ShapeDtypeStruct``."""
    head = jax.eval_shape(lambda: init_value_head(cfg.hidden_size, jax.random.PRNGKey(0)))
    return {"policy": decoder.param_shapes(cfg), "value_head": head}


def make_optimizer(opt: OptimizerSettings) -> optax.GradientTransformation:
    """Global-norm clipping (``max_grad_norm``; <= 0 disables), Adam moments (b1, b2, eps) and
    decoupled weight decay; the *direction* only — the update multiplies by ``-lr``."""
    parts = []
    if opt.max_grad_norm and opt.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.max_grad_norm))
    parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
    if opt.weight_decay:
        parts.append(optax.add_decayed_weights(opt.weight_decay))
    return optax.chain(*parts)


def learning_rate_schedule(opt: OptimizerSettings) -> optax.Schedule:
    """Learning rate as a function of the PPO update index (0-based), over ``num_updates``."""
    return make_schedule(opt, opt.num_updates)


@functools.lru_cache(maxsize=16)
def abstract_state(cfg: ModelConfig, opt: OptimizerSettings, mesh: Mesh) -> TrainState:
    """The PPO train state's ``jax.ShapeDtypeStruct`` tree with shardings on ``mesh`` (the
    orbax restore target; ``.sharding`` of each leaf is where the state lives)."""
    return abstract_train_state(abstract_ppo_params(cfg), make_optimizer(opt), mesh)


def state_shardings(cfg: ModelConfig, opt: OptimizerSettings, mesh: Mesh) -> TrainState:
    """A ``TrainState`` of ``NamedSharding`` (see :func:`abstract_state`)."""
    return jax.tree.map(lambda a: a.sharding, abstract_state(cfg, opt, mesh))


# ---------------------------------------------------------------- the forward pass


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
    logits = nnx.merge(decoder.graphdef(cfg), params["policy"]).logits(hidden)
    logp, entropy = token_logprobs(logits, tokens[:, p:], temperature, with_entropy)
    value = apply_value_head(params["value_head"], out.hidden[:, p - 1]) if with_value else None
    return logp, entropy, value


def _rows(mesh: Mesh, ndim: int) -> NamedSharding:
    return sharding_lib.batch_sharding(mesh, ndim)


def buffer_shardings(mesh: Mesh) -> RolloutBuffer:
    """Row-sharded (over ``data`` × ``fsdp``) placement of every buffer array."""
    return RolloutBuffer(_rows(mesh, 2), _rows(mesh, 2), _rows(mesh, 2), _rows(mesh, 2),
                         _rows(mesh, 2), _rows(mesh, 1), _rows(mesh, 1), _rows(mesh, 1))


def _chunks(x, size: int):
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
    rows1, rows2 = _rows(mesh, 1), _rows(mesh, 2)

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

        xs = tuple(_chunks(x, micro) for x in (buffer.tokens, buffer.attention_mask,
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


# ---------------------------------------------------------------- the update


def advantage_statistics(raw: jax.Array, mask: jax.Array) -> dict:
    """Mean, std, skewness and share positive of the raw (unnormalized) advantages ``[N]``
    over ``mask``; float32 scalars."""
    mean, std = advantages_lib.masked_mean_std(raw, mask)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    centered = (raw - mean) * mask
    m2 = jnp.sum(centered ** 2) / count
    m3 = jnp.sum(centered ** 3) / count
    return {"advantage_mean": mean, "advantage_std": std,
            "advantage_skewness": m3 / jnp.maximum(m2, 1e-12) ** 1.5,
            "advantage_positive_share": jnp.sum((raw > 0) * mask) / count}


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
    replicated = NamedSharding(mesh, P())
    rows2 = _rows(mesh, 2)

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
        raw, returns = advantages_lib.gae(buffer.rewards, scores.values, buffer.dones,
                                          jnp.zeros((), jnp.float32), s.gamma, s.gae_lambda)
        raw = raw * valid
        returns = returns * valid
        normalized = advantages_lib.normalize(raw, valid)
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
                (grads, sums), _ = jax.lax.scan(micro_step, (zeros, sums0),
                                                (_chunks(idx, micro), _chunks(slot_ok, micro)))
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

    scores_sharding = Scores(_rows(mesh, 1), _rows(mesh, 1), rows2, rows2)
    return jax.jit(update,
                   in_shardings=(shardings, buffer_shardings(mesh), scores_sharding, replicated),
                   out_shardings=(shardings, replicated, replicated),
                   donate_argnums=(0,) if donate else ())
