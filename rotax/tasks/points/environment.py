"""GeneralPoints as a PPO environment: sequential-revision episodes on freshly dealt hands, many
in parallel, and the per-token weights of the action log-prob (tokens before the formula count
``pre_formula_weight``).

Two recipes (``ppo.episode_end``, ``ppo.token_weighting``; see docs/reproducing-the-study.md):

* rotax's: the episode ends at the attempt limit (returns stop there); the formula starts at
  the first occurrence of the marker text in the decoded answer; every token before it is
  weighted, every token from it on counts 1.
* the study's reference code (``rl/trainer/model_tz_llama.py``, ``rl/trainer/storage_tz.py``):
  after the last graded attempt one more answer is sampled and stored with reward −1, and
  returns run on into the next hand (:func:`rotax.tasks.points.episodes.run_episodes`,
  ``step_limit_answer``); the weights are :func:`reference_token_weights`.

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
#: The reference's hard-coded ids of ``' "formula":'`` (Llama-3's tokenizer: ``' "'``,
#: ``'formula'``, ``'":'``); it uses them for every model, Qwen included.
REFERENCE_MARKER_IDS = (330, 60599, 794)
EPISODE_ENDS = ("terminal", "continue")
TOKEN_WEIGHTINGS = ("text_marker", "reference_ids")


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


def reference_token_weights(response_ids: Sequence[int], marker_ids: Sequence[int],
                            pre_formula_weight: float) -> np.ndarray:
    """``[R]`` float32: the weight of each response token in the reference's action log-prob
    (``VLMPolicy.evaluate`` of ``rl/trainer/model_tz_llama.py``), quirks included:

    * the first two response tokens never count, nor does any token with id 0;
    * the formula starts at the *last* occurrence of ``marker_ids`` in the ids; tokens from
      there on count 1, tokens 2 … start−1 count ``pre_formula_weight``;
    * without the marker the split falls before the 4th-last counted token (so
      ``pre_formula_weight`` covers nearly the whole answer), with fewer than 4 counted tokens
      nothing counts (the reference returns a constant log-prob);
    * the reference's Python slices are kept: a marker at position 0 or 1 wraps around;
    * answers shorter than 3 tokens count nothing (the reference's evaluation fails on them
      and returns 0).
    """
    ids = np.asarray(response_ids, np.int64)
    n, k = len(ids), len(marker_ids)
    weights = np.zeros(n, np.float32)
    if n < 3:
        return weights
    counted = ids[1:] != 0  # reference slot j is response token j + 1
    starts = [i for i in range(n - k + 1) if k and tuple(ids[i:i + k]) == tuple(marker_ids)]
    if starts:
        split = starts[-1]
    else:
        nonzero = np.flatnonzero(counted)
        if len(nonzero) < 4:
            return weights
        split = int(nonzero[-4])
    slots = np.arange(n - 1)
    slot_weight = np.zeros(n - 1, np.float32)
    slot_weight[slots[1:split - 1]] = pre_formula_weight
    slot_weight[slots[split - 1:]] = 1.0
    weights[1:] = slot_weight * counted
    return weights


def weigh_turn(turn: Turn, tokenizer, pre_formula_weight: float, marker: str,
               token_weighting: str = "text_marker", marker_ids: Sequence[int] = ()) -> Turn:
    """``turn`` with its ``token_weight`` set: ``text_marker`` — :func:`token_weights` at the
    :func:`formula_position` of ``marker`` (all ones when ``pre_formula_weight == 1``);
    ``reference_ids`` — :func:`reference_token_weights` with ``marker_ids``."""
    n = len(turn.response_ids)
    if token_weighting == "reference_ids":
        return dataclasses.replace(turn, token_weight=reference_token_weights(
            turn.response_ids, marker_ids, pre_formula_weight))
    position = None
    if pre_formula_weight != 1.0 and n:
        position = formula_position(tokenizer, turn.response_ids, marker)
    return dataclasses.replace(turn, token_weight=token_weights(n, position, pre_formula_weight))


def environment_settings(ppo) -> dict:
    """Keyword arguments of :class:`GeneralPointsEnvironment` from a ``ppo`` config section:
    ``options`` (temperature, top-k, top-p, repetition penalty, max new tokens) and the
    recipe keys (token weights, episode end)."""
    options = sampling.SamplingOptions(
        temperature=ppo.temperature, top_k=ppo.top_k, top_p=ppo.top_p,
        max_new_tokens=ppo.max_new_tokens, repetition_penalty=ppo.repetition_penalty)
    return dict(options=options, attempts=ppo.attempts, batch_size=ppo.rollout_batch_size,
                pre_formula_weight=ppo.pre_formula_weight, formula_marker=ppo.formula_marker,
                token_weighting=ppo.token_weighting,
                formula_marker_ids=tuple(int(i) for i in ppo.formula_marker_ids),
                episode_end=ppo.episode_end)


@dataclasses.dataclass
class GeneralPointsEnvironment:
    """Revision episodes on ``episodes`` hands per update, sampled at ``options`` in batches of
    ``batch_size`` rows. Update ``u``'s hands are ``deal(u)`` when given, else dealt under
    ``rule`` from ``random.Random(f"ppo-hands:{seed}:{u}")`` (so they depend only on the seed
    and ``u``). ``pre_formula_weight``/``formula_marker``/``token_weighting``/
    ``formula_marker_ids``: see :func:`weigh_turn` and :func:`formula_marker_for` (empty
    ``formula_marker_ids``: the tokenizer's ids of ``' "formula":'``). ``episode_end``:
    ``terminal`` (rotax) or ``continue`` (the reference; see the module docstring)."""

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
    token_weighting: str = "text_marker"
    formula_marker_ids: tuple = ()
    episode_end: str = "terminal"

    def __post_init__(self):
        if self.episode_end not in EPISODE_ENDS:
            raise ValueError(f"ppo.episode_end {self.episode_end!r}: choose one of {EPISODE_ENDS}")
        if self.token_weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(f"ppo.token_weighting {self.token_weighting!r}: choose one of "
                             f"{TOKEN_WEIGHTINGS}")

    @property
    def max_turns(self) -> int:
        """Most time steps one episode can give (the PPO buffer's rows per episode)."""
        return self.attempts + (self.episode_end == "continue")

    def marker_ids(self) -> tuple:
        if self.formula_marker_ids:
            return tuple(self.formula_marker_ids)
        return tuple(self.tokenizer.encode(' "formula":', add_special_tokens=False))

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
                             progress=False, step_limit_answer=self.episode_end == "continue")
        marker = formula_marker_for(self.renderer, self.formula_marker)
        marker_ids = self.marker_ids() if self.token_weighting == "reference_ids" else ()
        turns = [weigh_turn(t, self.tokenizer, self.pre_formula_weight, marker,
                            self.token_weighting, marker_ids) for t in batch.turns]
        return Rollout(turns, len(batch.episodes), batch.solved, generator.seconds,
                       time.perf_counter() - began)
