"""PPO rollouts: what an environment returns after playing whole episodes with the current
policy, and the padded buffer of time steps the update consumes.

A time step is one model turn: state = the dialogue so far (prompt ids), action = the sampled
response, reward = that attempt's reward. Any object with a ``play`` method returning a
:class:`Rollout` is an environment (GeneralPoints: :class:`rotax.tasks.points.environment.
GeneralPointsEnvironment`; the tests also use a one-turn task). Its steps are records with
``hand_index`` (episode), ``attempt``, ``prompt_ids``, ``response_ids``, ``response_logprobs``,
``reward``, ``done`` and optionally ``token_weight`` and ``terminal`` (:class:`Step`).

:func:`build_buffer` lays the steps out *episode-major* (episode 0's turns in order, then
episode 1's, ...), valid rows first and padding rows last, so GAE is one reverse scan over the
rows with ``dones`` marking where returns stop (episode ends, unless a step says it is not
``terminal``: then GAE runs on into the next episode's first row, as the study's reference
does after its step limit; after the last valid row it meets the padding, whose value is 0).
Each row is ``[prompt left-padded to P | response
right-padded to R]``; the value is read at slot ``P - 1`` (the last prompt token).
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple, Protocol, Sequence

import jax
import numpy as np

from rotax import sampling


class Step(Protocol):
    """One time step as :func:`build_buffer` reads it. ``token_weight`` (optional, ``[R]``
    float32): the weight of each response token's log-prob in the action log-prob (all ones
    when absent). ``terminal`` (optional bool or None): whether returns stop after this step
    (default: ``done``)."""

    hand_index: int
    attempt: int
    prompt_ids: np.ndarray
    response_ids: np.ndarray
    response_logprobs: np.ndarray
    reward: float
    done: bool


@dataclasses.dataclass
class Rollout:
    """The turns of ``episodes`` finished episodes (any order; :func:`build_buffer` sorts them)
    and what they cost. ``solved`` ``[E]`` bool; ``sample_seconds``: time inside the sampler;
    ``seconds``: the whole rollout (sampling + tokenization + grading)."""

    turns: list[Step]
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


# ---------------------------------------------------------------- the buffer


class RolloutBuffer(NamedTuple):
    """Fixed-shape arrays of ``N`` rows (valid rows first), ``S = P + R`` slots.

    tokens ``[N, S]`` int32; attention_mask ``[N, S]`` bool (real tokens); response_mask
    ``[N, R]`` float32 (real response tokens); token_weight ``[N, R]`` float32 (the weight of
    each response token's log-prob in the action log-prob; 0 on padding); sampler_logprob
    ``[N, R]`` float32 (the sampler's own log-probs, a diagnostic); rewards ``[N]`` float32;
    dones ``[N]`` bool (returns stop after this row; true on padding rows); row_mask ``[N]``
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


def episode_major(turns: Sequence[Step]) -> list[Step]:
    """``turns`` sorted by (episode, attempt); the last turn of every episode must be ``done``
    (truncation by the attempt limit counts as done). Raises ValueError otherwise."""
    ordered = sorted(turns, key=lambda t: (t.hand_index, t.attempt))
    for i, turn in enumerate(ordered):
        last = i + 1 == len(ordered) or ordered[i + 1].hand_index != turn.hand_index
        if last and not turn.done:
            raise ValueError(f"episode {turn.hand_index} ends at attempt {turn.attempt} without done")
    return ordered


def buffer_rows(episodes: int, attempts: int, multiple: int) -> int:
    """Rows of a buffer that holds every possible step: ``episodes * attempts`` rounded up to
    a multiple of ``multiple`` (the microbatch size) — one fixed shape per run."""
    need = max(episodes * attempts, 1)
    return -(-need // multiple) * multiple


def build_buffer(turns: Sequence[Step], *, rows: int, pad_id: int, max_new_tokens: int) -> RolloutBuffer:
    """The :class:`RolloutBuffer` of ``turns`` (episode-major, see :func:`episode_major`).

    ``P`` is :func:`rotax.sampling.sampler.bucket_length` of the longest prompt, ``R`` that of the
    longest response (at most ``max_new_tokens`` rounded up to a bucket), so shapes — and
    compiles — change only between buckets.
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
        token_weight = getattr(turn, "token_weight", None)
        weight[i, :n] = 1.0 if token_weight is None else np.asarray(token_weight, np.float32)[:n]
        sampler_logprob[i, :n] = np.asarray(turn.response_logprobs, np.float32)
        rewards[i] = turn.reward
        terminal = getattr(turn, "terminal", None)
        dones[i] = turn.done if terminal is None else terminal
        row_mask[i] = 1.0
    return RolloutBuffer(tokens, attention, response_mask, weight, sampler_logprob, rewards,
                         dones, row_mask)
