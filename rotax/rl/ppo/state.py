"""The PPO parameters and optimizer: ``{"policy": canonical tree, "value_head": subtree}``
(actor and critic share one backbone), the optimizer built from
:class:`rotax.rl.ppo.config.OptimizerSettings`, and the train state's abstract shapes and shardings (the
orbax restore target).

The sampler reads ``params["policy"]`` directly, so rollouts and the learner share one copy of
the weights. The learning rate is not part of the optimizer: it is ``schedule(update)``
(:func:`learning_rate_schedule`), advanced once per PPO update like the reference's
``CosineAnnealingLR``, and applied by :func:`rotax.rl.ppo.update.make_update_fn`.
"""

from __future__ import annotations

import functools

import jax
import optax
from jax.sharding import Mesh

from rotax.models import decoder
from rotax.models.config import ModelConfig
from rotax.training.train_state import TrainState, abstract_train_state, make_schedule
from rotax.models.value_head import init_value_head
from rotax.rl.ppo.config import OptimizerSettings



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
