"""The shuffled-reward control environment."""

import dataclasses

import numpy as np

from rotax.rl.rollout import Rollout
from rotax.rl.shuffled import ShuffledRewards


@dataclasses.dataclass
class _Turn:
    hand_index: int
    reward: float


class _Env:
    episodes = 8

    def play(self, cfg, params, key, update):
        turns = [_Turn(i, float(i) * 1.5) for i in range(self.episodes)]
        return Rollout(turns=turns, episodes=self.episodes, solved=np.arange(8) % 2 == 0)


def test_rewards_are_permuted_among_turns_per_update():
    env = ShuffledRewards(_Env(), seed=3)
    first, again, later = (env.play(None, None, None, u) for u in (0, 0, 1))
    rewards = [t.reward for t in first.turns]
    assert sorted(rewards) == [i * 1.5 for i in range(8)]  # the same rewards, other turns
    assert rewards != [i * 1.5 for i in range(8)]
    assert rewards == [t.reward for t in again.turns]  # deterministic per (seed, update)
    assert rewards != [t.reward for t in later.turns]
    assert [t.hand_index for t in first.turns] == list(range(8))  # only the rewards move
    assert env.episodes == 8  # everything else is the wrapped environment's
