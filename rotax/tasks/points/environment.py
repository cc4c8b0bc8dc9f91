"""GeneralPoints as a PPO environment: sequential-revision episodes on freshly dealt hands, many
in parallel, and the reference's per-token weights (tokens before the formula count
``pre_formula_weight`` in the action log-prob).

:class:`GeneralPointsEnvironment` satisfies :class:`rotax.rl.rollout.Environment`; the PPO loop
knows nothing of cards, renderers or formulas.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable, Sequence

import numpy as np

from rotax import sampling
from rotax.rl.rollout import Rollout, TimedGenerator
from rotax.tasks.points import MAX_ATTEMPTS, Renderer, RuleLike, deal_hands, default_deal
from rotax.tasks.points.episodes import Turn, model_generator, run_episodes

#: Where the formula starts when the renderer has no ``ANSWER_MARK``: the reference's JSON key.
JSON_FORMULA_MARKER = '"formula"'


def formula_marker_for(renderer, marker: str = "") -> str:
    """``marker`` if given, else the renderer's ``ANSWER_MARK`` (the compact renderer's ``:``),
    else the JSON key ``"formula"``."""
    return marker or getattr(renderer, "ANSWER_MARK", None) or JSON_FORMULA_MARKER


def formula_position(tokenizer, response_ids: Sequence[int], marker: str) -> int | None:
    """Index of the first response token whose text reaches the first character of ``marker``
    in the decoded response (tokens before it are the reference's "thought" tokens), or None
    when the marker does not occur. Binary search over decoded prefixes."""
    text = tokenizer.decode(list(response_ids), skip_special_tokens=True)
    offset = text.find(marker)
    if offset < 0:
        return None
    low, high = 1, len(response_ids)  # smallest k with len(decode(ids[:k])) > offset
    while low < high:
        mid = (low + high) // 2
        if len(tokenizer.decode(list(response_ids[:mid]), skip_special_tokens=True)) > offset:
            high = mid
        else:
            low = mid + 1
    return low - 1


def token_weights(length: int, formula_index: int | None, pre_formula_weight: float) -> np.ndarray:
    """``[length]`` float32: ``pre_formula_weight`` before ``formula_index``, 1 from it on (all
    ones when the index is None)."""
    weights = np.ones(length, np.float32)
    if formula_index is not None:
        weights[:formula_index] = pre_formula_weight
    return weights


def weigh_turn(turn: Turn, tokenizer, pre_formula_weight: float, marker: str) -> Turn:
    """``turn`` with its ``token_weight`` set (all ones when ``pre_formula_weight == 1``)."""
    n = len(turn.response_ids)
    position = None
    if pre_formula_weight != 1.0 and n:
        position = formula_position(tokenizer, turn.response_ids, marker)
    return dataclasses.replace(turn, token_weight=token_weights(n, position, pre_formula_weight))


@dataclasses.dataclass
class GeneralPointsEnvironment:
    """Revision episodes on ``episodes`` hands per update, sampled at ``options`` in batches of
    ``batch_size`` rows. Update ``u``'s hands are ``deal(u)`` when given, else dealt under
    ``rule`` from ``random.Random(f"ppo-hands:{seed}:{u}")`` (so they depend only on the seed
    and ``u``). ``pre_formula_weight``/``formula_marker``: see :func:`weigh_turn` and
    :func:`formula_marker_for`."""

    tokenizer: object
    renderer: Renderer
    rule: RuleLike
    episodes: int
    options: sampling.SamplingOptions
    attempts: int = MAX_ATTEMPTS
    batch_size: int = 64
    seed: int = 0
    mesh: object = None
    pre_formula_weight: float = 1.0
    formula_marker: str = ""
    deal: Callable[[int], list] | None = None

    def hands(self, update: int) -> list:
        if self.deal is not None:
            return self.deal(update)
        rng = random.Random(f"ppo-hands:{self.seed}:{update}")
        return deal_hands(rng, self.rule, self.episodes, default_deal(self.rule))

    def play(self, cfg, params, key, update: int) -> Rollout:
        began = time.perf_counter()
        generator = TimedGenerator(model_generator(cfg, params, self.tokenizer, self.options,
                                                   batch_size=self.batch_size, mesh=self.mesh))
        batch = run_episodes(cfg, params, self.tokenizer, self.renderer, self.hands(update),
                             self.rule, key, attempts=self.attempts, options=self.options,
                             batch_size=self.batch_size, mesh=self.mesh, generator=generator,
                             progress=False)
        marker = formula_marker_for(self.renderer, self.formula_marker)
        turns = [weigh_turn(t, self.tokenizer, self.pre_formula_weight, marker) for t in batch.turns]
        return Rollout(turns, len(batch.episodes), batch.solved, generator.seconds,
                       time.perf_counter() - began)
