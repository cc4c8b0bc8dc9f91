"""The train state (params, optimizer state, step, RNG) as one pytree, its optimizer and shardings.

Shared by SFT and PPO: a stage's config section carries the optimizer keys of
:func:`optimizer_config` and builds its optimizer with :func:`make_optimizer`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rotax.runtime import sharding as sharding_lib
from rotax.runtime.host import to_host

SCHEDULES = ("constant", "cosine", "linear")
WARMUP_SHAPES = ("linear", "log")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the message names the step (SFT) or update (PPO)."""


class TrainState(NamedTuple):
    """Everything a step reads and writes; a pytree orbax saves as is.

    step: int32 ``[]`` — optimizer updates done so far.
    params: the canonical parameter tree (docs/architecture.md), master dtype.
    opt_state: the optax state (moments are trees shaped like ``params``).
    rng: uint32 ``[2]`` — a raw ``jax.random`` key, split once per step.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def optimizer_config() -> ml_collections.ConfigDict:
    """Optimizer keys of a training stage's section (study defaults: SPEC §2).

    learning_rate: peak learning rate. schedule: one of ``constant`` (linear warm-up, then
    constant), ``cosine`` (warm-up, cosine to ``end_learning_rate``), ``linear`` (warm-up,
    linear to ``end_learning_rate``). decay_steps: the horizon of that decay (0 = num_steps; a
    run may stop before it — the toy base stops at step 1,300 of a 2,400-step cosine).
    warmup_fraction: warm-up length as a share of
    ``num_steps`` (used when ``warmup_steps`` is -1). warmup_shape: ``linear`` (0 → peak) or
    ``log`` (DeepSpeed's ``WarmupLR`` with ``warmup_type="log"``, which the study's SFT log
    shows: ``peak · ln(step + 1) / ln(warm-up steps)`` at 0-based step ``step``, 0 at the first
    step; :func:`log_warmup_schedule`). b1, b2, eps, weight_decay: AdamW
    (decoupled decay on every parameter, as torch.optim.AdamW). max_grad_norm: global-norm
    clipping (<= 0 disables).
    """
    return ml_collections.ConfigDict({
        "learning_rate": 1e-6,
        "schedule": "constant",
        "warmup_fraction": 0.03,
        "warmup_steps": -1,
        "warmup_shape": "linear",
        "end_learning_rate": 0.0,
        "decay_steps": 0,
        "b1": 0.9,
        "b2": 0.98,
        "eps": 1e-7,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
    })


def warmup_steps(section, num_steps: int) -> int:
    """Number of warm-up steps for a section with ``warmup_steps``/``warmup_fraction``."""
    if section.warmup_steps >= 0:
        return int(section.warmup_steps)
    return int(round(section.warmup_fraction * num_steps))


def log_warmup_schedule(peak: float, steps: int) -> optax.Schedule:
    """``peak · min(1, ln(count + 1) / ln(steps))``: DeepSpeed ``WarmupLR``'s log warm-up from 0
    (``warmup_min_lr`` 0) over ``steps`` optimizer steps (``steps >= 2``)."""
    if steps < 2:
        raise ValueError(f"a log-shaped warm-up needs at least 2 steps, got {steps}")
    inverse = 1.0 / math.log(steps)

    def schedule(count):
        ratio = jnp.log1p(jnp.asarray(count, jnp.float32)) * inverse
        return peak * jnp.minimum(ratio, 1.0)

    return schedule


def make_schedule(section, num_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step (``int32 [] -> float32 []``)."""
    peak, end = float(section.learning_rate), float(section.end_learning_rate)
    warm = warmup_steps(section, num_steps)
    num_steps = int(getattr(section, "decay_steps", 0) or num_steps)  # the decay's horizon
    if section.schedule not in SCHEDULES:
        raise ValueError(f"schedule {section.schedule!r}: choose one of {SCHEDULES}")
    shape = getattr(section, "warmup_shape", "linear")
    if shape not in WARMUP_SHAPES:
        raise ValueError(f"warmup_shape {shape!r}: choose one of {WARMUP_SHAPES}")
    if section.schedule == "cosine" and shape == "linear":
        return optax.warmup_cosine_decay_schedule(0.0, peak, max(warm, 0), max(num_steps, warm + 1), end)
    if section.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(num_steps - warm, 1), end / peak if peak else 0.0)
    elif section.schedule == "linear":
        decay = optax.linear_schedule(peak, end, max(num_steps - warm, 1))
    else:
        decay = optax.constant_schedule(peak)
    if warm <= 0:
        return decay
    warmup = log_warmup_schedule(peak, warm) if shape == "log" else optax.linear_schedule(0.0, peak, warm)
    return optax.join_schedules([warmup, decay], [warm])


def make_optimizer(section, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimizer, schedule)``: global-norm clipping then AdamW with ``section``'s keys."""
    schedule = make_schedule(section, num_steps)
    parts = []
    if section.max_grad_norm and section.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(float(section.max_grad_norm)))
    parts.append(optax.adamw(schedule, b1=float(section.b1), b2=float(section.b2),
                             eps=float(section.eps), weight_decay=float(section.weight_decay)))
    return optax.chain(*parts), schedule


def init_train_state(params, optimizer: optax.GradientTransformation, seed: int,
                     shardings: TrainState | None = None) -> TrainState:
    """A step-0 state for ``params`` (placed in ``shardings`` when given)."""

    def build(p):
        return TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p), jax.random.PRNGKey(seed))

    return jax.jit(build, out_shardings=shardings)(params)


def state_shardings(abstract_state: TrainState, mesh: Mesh) -> TrainState:
    """A ``TrainState`` of ``NamedSharding``: params and optimizer moments by the canonical
    logical-axis rules (the moments' paths end in the parameter names), scalars replicated."""
    replicated = sharding_lib.replicated(mesh)
    return TrainState(step=replicated,
                      params=sharding_lib.param_shardings(abstract_state.params, mesh),
                      opt_state=sharding_lib.param_shardings(abstract_state.opt_state, mesh),
                      rng=replicated)


def abstract_train_state(param_shapes, optimizer: optax.GradientTransformation,
                         mesh: Mesh) -> TrainState:
    """The state's ``jax.ShapeDtypeStruct`` tree, each with its sharding on ``mesh`` — the
    target orbax restores into (restoring onto any mesh works)."""
    shapes = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p),
                                                 jax.random.PRNGKey(0)), param_shapes)
    shardings = state_shardings(shapes, mesh)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def host_params(state) -> dict:
    """The params of a train state as numpy arrays (for comparisons and tests); on several
    processes every one must call it (sharded leaves are all-gathered)."""
    return to_host(state.params)
