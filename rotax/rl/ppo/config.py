"""The ``ppo`` config section and the static (hashable) settings read from it. A leaf of
:mod:`rotax.rl.ppo`: the score, state and update modules import their settings types from here."""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from rotax.rl.ppo.loss import KL_ESTIMATORS, LossConfig
from rotax.training.train_state import optimizer_config


def default_config() -> ml_collections.ConfigDict:
    """The ``ppo`` section (study defaults, SPEC §3).

    Rollouts: num_updates; episodes_per_update (hands per rollout, each a revision episode of
    up to ``attempts`` turns); rule (``id``/``ood``/``J,Q,K`` of the training hands);
    temperature, top_k, top_p, repetition_penalty (1 = off), max_new_tokens (sampling; 512 as
    in the reference's RL runs); rollout_batch_size (rows per sampler call). episode_end:
    ``terminal`` (returns stop at the attempt limit) or ``continue`` (the study's reference:
    one more answer after the limit, reward −1, returns run on into the next episode). Returns: gamma, gae_lambda, reward_scale (the
    verifier's rewards are multiplied by it before GAE — 1 in the study; the toy uses 0.2 so a
    small shared trunk is not dominated by the value loss; logged rewards stay unscaled).

    Update: epochs; minibatch_size (time steps per optimizer step; the valid steps are split
    evenly into ``ceil(steps / minibatch_size)`` minibatches); microbatch_size (rows per
    forward/backward; divides minibatch_size); clip_epsilon; value_clip_epsilon; value_coef;
    entropy_coef (bonus, default 0); kl_coef (per-token KL to the frozen initial policy,
    default 0 = off, no reference copy kept) with kl_estimator (``k1``/``k3``);
    pre_formula_weight (weight of response tokens before the formula key in the action
    log-prob; the reference uses 0.5) and formula_marker (``""``: the renderer's —
    ``"formula"`` for JSON, ``:`` for the compact form); token_weighting ``text_marker``
    (first occurrence of the marker in the decoded text) or ``reference_ids`` (the
    reference's rule on token ids: last occurrence of formula_marker_ids, first two tokens
    dropped, fallback without the marker; empty ids = the tokenizer's ``' "formula":'``; see
    :mod:`rotax.tasks.points.environment`). Optimizer keys of
    :func:`rotax.training.train_state.optimizer_config` with the reference's values (Adam lr 1e-6,
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
        "repetition_penalty": 1.0,
        "max_new_tokens": 512,
        "rollout_batch_size": 64,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "reward_scale": 1.0,
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
        "token_weighting": "text_marker",
        "formula_marker_ids": (),
        "episode_end": "terminal",
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
    reward_scale: float = 1.0

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
                   int(ppo.minibatch_size), int(ppo.microbatch_size), float(ppo.reward_scale))


class OptimizerSettings(NamedTuple):
    """The optimizer keys of the ``ppo`` section (hashable; also readable by
    :func:`rotax.training.train_state.make_schedule`) and the number of updates the schedule spans."""

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
    warmup_shape: str = "linear"

    @classmethod
    def from_config(cls, ppo) -> "OptimizerSettings":
        return cls(float(ppo.learning_rate), str(ppo.schedule), float(ppo.warmup_fraction),
                   int(ppo.warmup_steps), float(ppo.end_learning_rate), float(ppo.b1),
                   float(ppo.b2), float(ppo.eps), float(ppo.weight_decay),
                   float(ppo.max_grad_norm), int(ppo.num_updates), str(ppo.warmup_shape))
