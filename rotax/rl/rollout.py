"""PPO rollouts: environments that play whole episodes with the current policy, and the padded
buffer of time steps the update consumes.

A time step is one model turn: state = the dialogue so far (prompt ids), action = the sampled
response, reward = that attempt's verifier reward. :class:`GeneralPointsEnvironment` plays
sequential-revision episodes (:func:`rotax.tasks.points.episodes.run_episodes`) on freshly dealt hands,
many in parallel; any object with a ``play`` method returning a :class:`Rollout` can replace it
(the tests use a one-turn task).

:func:`build_buffer` lays the steps out *episode-major* (episode 0's turns in order, then
episode 1's, ...), valid rows first and padding rows last, so GAE is one reverse scan over the
rows with ``dones`` marking episode ends. Each row is ``[prompt left-padded to P | response
right-padded to R]``; the value is read at slot ``P - 1`` (the last prompt token).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import NamedTuple, Protocol, Sequence

import jax
import numpy as np

from rotax import sampling
from rotax.tasks.points.episodes import Turn, model_generator, run_episodes
from rotax.tasks.points import MAX_ATTEMPTS, Renderer, RuleLike, deal_hands, default_deal


@dataclasses.dataclass
class Rollout:
    """The turns of ``episodes`` finished episodes (any order; :func:`build_buffer` sorts them)
    and what they cost. ``solved`` ``[E]`` bool; ``sample_seconds``: time inside the sampler;
    ``seconds``: the whole rollout (sampling + tokenization + grading)."""

    turns: list[Turn]
    episodes: int
    solved: np.ndarray
    sample_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return int(sum(len(t.response_ids) for t in self.turns))


class Environment(Protocol):
    def play(self, cfg, params, key: jax.Array, update: int) -> Rollout:
        """Plays this update's episodes with the policy ``(cfg, params)`` (canonical tree)."""


class TimedGenerator:
    """Wraps an episode generator and adds up the seconds spent in it (results fetched)."""

    def __init__(self, generator):
        self.generator, self.seconds = generator, 0.0

    def __call__(self, prompts, row_ids, key):
        began = time.perf_counter()
        out = self.generator(prompts, row_ids, key)
        self.seconds += time.perf_counter() - began
        return out


@dataclasses.dataclass
class GeneralPointsEnvironment:
    """Revision episodes on ``episodes`` hands per update, dealt under ``rule`` from
    ``random.Random(f"ppo-hands:{seed}:{update}")`` (so update ``u``'s hands depend only on the
    seed and ``u``), sampled at ``options`` in batches of ``batch_size`` rows."""

    tokenizer: object
    renderer: Renderer
    rule: RuleLike
    episodes: int
    options: sampling.SamplingOptions
    attempts: int = MAX_ATTEMPTS
    batch_size: int = 64
    seed: int = 0
    mesh: object = None

    def hands(self, update: int) -> list:
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
        return Rollout(batch.turns, len(batch.episodes), batch.solved, generator.seconds,
                       time.perf_counter() - began)


# ---------------------------------------------------------------- the buffer


class RolloutBuffer(NamedTuple):
    """Fixed-shape arrays of ``N`` rows (valid rows first), ``S = P + R`` slots.

    tokens ``[N, S]`` int32; attention_mask ``[N, S]`` bool (real tokens); response_mask
    ``[N, R]`` float32 (real response tokens); token_weight ``[N, R]`` float32 (the weight of
    each response token's log-prob in the action log-prob; 0 on padding); sampler_logprob
    ``[N, R]`` float32 (the sampler's own log-probs, a diagnostic); rewards ``[N]`` float32;
    dones ``[N]`` bool (the episode ends with this row; true on padding rows); row_mask ``[N]``
    float32 (1 = real step).
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray
    token_weight: np.ndarray
    sampler_logprob: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    row_mask: np.ndarray

    @property
    def prompt_length(self) -> int:
        return self.tokens.shape[1] - self.response_mask.shape[1]


def episode_major(turns: Sequence[Turn]) -> list[Turn]:
    """``turns`` sorted by (episode, attempt); the last turn of every episode must be ``done``
    (truncation by the attempt limit counts as done). Raises ValueError otherwise."""
    ordered = sorted(turns, key=lambda t: (t.hand_index, t.attempt))
    for i, turn in enumerate(ordered):
        last = i + 1 == len(ordered) or ordered[i + 1].hand_index != turn.hand_index
        if last and not turn.done:
            raise ValueError(f"episode {turn.hand_index} ends at attempt {turn.attempt} without done")
    return ordered


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


def buffer_rows(episodes: int, attempts: int, multiple: int) -> int:
    """Rows of a buffer that holds every possible step: ``episodes * attempts`` rounded up to
    a multiple of ``multiple`` (the microbatch size) — one fixed shape per run."""
    need = max(episodes * attempts, 1)
    return -(-need // multiple) * multiple


def build_buffer(turns: Sequence[Turn], *, rows: int, pad_id: int, max_new_tokens: int,
                 tokenizer=None, pre_formula_weight: float = 1.0,
                 formula_marker: str = '"formula"') -> RolloutBuffer:
    """The :class:`RolloutBuffer` of ``turns`` (episode-major, see :func:`episode_major`).

    ``P`` is :func:`rotax.sampling.sampler.bucket_length` of the longest prompt, ``R`` that of the
    longest response (at most ``max_new_tokens`` rounded up to a bucket), so shapes — and
    compiles — change only between buckets. With ``pre_formula_weight != 1`` the tokenizer
    locates ``formula_marker`` in each response (:func:`formula_position`).
    """
    ordered = episode_major(turns)
    if len(ordered) > rows:
        raise ValueError(f"{len(ordered)} steps do not fit a buffer of {rows} rows")
    longest_prompt = max((len(t.prompt_ids) for t in ordered), default=1)
    longest_response = max((len(t.response_ids) for t in ordered), default=1)
    p = sampling.bucket_length(longest_prompt)
    r = min(sampling.bucket_length(max(longest_response, 1), minimum=8),
            sampling.bucket_length(max_new_tokens, minimum=8))
    tokens = np.full((rows, p + r), pad_id, np.int32)
    attention = np.zeros((rows, p + r), bool)
    response_mask = np.zeros((rows, r), np.float32)
    weight = np.zeros((rows, r), np.float32)
    sampler_logprob = np.zeros((rows, r), np.float32)
    rewards = np.zeros((rows,), np.float32)
    dones = np.ones((rows,), bool)
    row_mask = np.zeros((rows,), np.float32)
    for i, turn in enumerate(ordered):
        prompt, response = np.asarray(turn.prompt_ids), np.asarray(turn.response_ids)
        n = len(response)
        tokens[i, p - len(prompt):p] = prompt
        attention[i, p - len(prompt):p] = True
        tokens[i, p:p + n] = response
        attention[i, p:p + n] = True
        response_mask[i, :n] = 1.0
        position = None
        if pre_formula_weight != 1.0 and n:
            if tokenizer is None:
                raise ValueError("pre_formula_weight != 1 needs the tokenizer")
            position = formula_position(tokenizer, response, formula_marker)
        weight[i, :n] = token_weights(n, position, pre_formula_weight)
        sampler_logprob[i, :n] = np.asarray(turn.response_logprobs, np.float32)
        rewards[i] = turn.reward
        dones[i] = turn.done
        row_mask[i] = 1.0
    return RolloutBuffer(tokens, attention, response_mask, weight, sampler_logprob, rewards,
                         dones, row_mask)
