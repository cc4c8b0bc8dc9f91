"""PPO for the revision episodes (SPEC §3). ``from rotax.rl import ppo`` gives the public names.

Actor and critic share one backbone; params are ``{"policy": canonical tree, "value_head":
value-head subtree}``. One PPO update is two jitted calls:

1. :func:`rotax.rl.ppo.score.make_score_fn` — one forward pass over the buffer with the
   pre-update params: values, the action log-probs at the rollout temperature, the reference
   policy's token log-probs when the KL penalty is on.
2. :func:`rotax.rl.ppo.update.make_update_fn` — GAE, advantage normalization, epochs ×
   minibatches × microbatches of optimizer steps.

Modules: ``config`` (the ``ppo`` section, settings types), ``loss`` (the clipped PPO loss),
``state`` (params, optimizer and train-state shapes/shardings), ``score``, ``update``, ``loop``
(rollouts, checkpoints, evaluation, logging).
"""

from rotax.rl.ppo.config import OptimizerSettings, UpdateSettings, default_config
from rotax.rl.ppo.score import Scores, buffer_shardings, evaluate_steps, make_score_fn
from rotax.rl.ppo.state import (abstract_ppo_params, abstract_state, init_ppo_params,
                                learning_rate_schedule, make_optimizer, state_shardings)
from rotax.rl.ppo.update import LOSS_METRICS, advantage_statistics, explained_variance, make_update_fn

__all__ = [
    "default_config", "UpdateSettings", "OptimizerSettings",
    "Scores", "buffer_shardings", "evaluate_steps", "make_score_fn",
    "abstract_ppo_params", "abstract_state", "init_ppo_params", "learning_rate_schedule",
    "make_optimizer", "state_shardings",
    "LOSS_METRICS", "advantage_statistics", "explained_variance", "make_update_fn",
]
