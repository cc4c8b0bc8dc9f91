"""A control environment: the wrapped environment's episodes with their rewards shuffled.

PPO on shuffled rewards keeps everything but the reward's information (the same prompts,
samples, reward distribution and update sizes), so gains that survive it do not come from
the reward."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rotax.rl.rollout import Rollout


class ShuffledRewards:
    """``play`` returns ``env.play``'s rollout with the turns' rewards permuted among the turns
    (a fresh permutation per update, from ``seed`` and the update number)."""

    def __init__(self, env, seed: int):
        self.env, self.seed = env, int(seed)

    def play(self, cfg, params, key: jax.Array, update: int) -> Rollout:
        rollout = self.env.play(cfg, params, key, update)
        rewards = np.array([t.reward for t in rollout.turns], np.float64)
        order = np.random.default_rng([self.seed, int(update)]).permutation(len(rewards))
        turns = [dataclasses.replace(t, reward=float(r)) for t, r in zip(rollout.turns, rewards[order])]
        return dataclasses.replace(rollout, turns=turns)

    def __getattr__(self, name):  # everything else (evaluation helpers, settings) as the wrapped one
        return getattr(self.env, name)
