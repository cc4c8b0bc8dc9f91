"""The episode engine: sequential-revision episodes (SPEC §1) for a batch of hands at once.

Every attempt round gathers the dialogue of each still-active episode, encodes it with the
chat template (``encode_prompt``: the whole dialogue so far, re-rendered from text each turn,
as the reference does) and sends all of them through the generator in batches; each answer
is decoded, graded, and the episode advances (:class:`rotax.tasks.points.Episode`). An episode
ends at +5 or after ``attempts`` graded attempts. With ``step_limit_answer`` (the study's
reference code, for PPO) an episode that used every attempt without solving gets one more,
ungraded answer to the dialogue so far, recorded with reward :data:`STEP_LIMIT_REWARD` — the
reference's environment returns that when its step limit is reached, as a truncation, not a
termination (its ``general_points_oneline.py``), so PPO's GAE runs on past it.

The generator is injectable (tests use scripted answers): any callable
``generator(prompts, row_ids, key) -> list[Generation]`` taking token-id lists. The default,
:func:`model_generator`, samples with :func:`rotax.sampling.sampler.generate`; row ids are the hand
indices and the key is ``fold_in(key, attempt)``, so a hand's answers do not depend on which
other hands share its batch.

The per-turn records (:class:`Turn`) are what PPO consumes: one time step per model turn.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import numpy as np

from rotax import sampling
from rotax.io.tokenizer import decode_response, encode_prompt, eos_ids, pad_id
from rotax.tasks.points import MAX_ATTEMPTS, Episode, Renderer, RuleLike

Generator = Callable[[list, list, jax.Array], list]

#: Reward of the answer given after the last graded attempt (the reference's step-limit reward).
STEP_LIMIT_REWARD = -1.0
STEP_LIMIT_KIND = "step_limit"


@dataclasses.dataclass(frozen=True)
class Turn:
    """One model turn of one episode.

    ``prompt_ids`` ``[P]`` int32: the full dialogue so far in the chat template, ending with the
    generation prompt; ``response_ids`` ``[R]`` int32 and ``response_logprobs`` ``[R]``
    float32: the sampled answer incl. its EOS (unless ``truncated``), log-probs as in
    :mod:`rotax.sampling.sampler`; ``reward``/``solved``/``kind``/``reasons``: the verifier's
    :class:`~rotax.tasks.points.Grade`; ``done``: the episode ended with this turn;
    ``terminal``: whether returns stop after this turn (None: when ``done``). Step-limit
    answers (``kind == "step_limit"``) and the failed turns before them are not terminal.
    """

    hand_index: int
    attempt: int  # 0-based
    prompt_ids: np.ndarray
    response_ids: np.ndarray
    response_logprobs: np.ndarray
    response_text: str
    reward: float
    solved: bool
    done: bool
    truncated: bool
    kind: str
    reasons: str
    token_weight: np.ndarray | None = None  # per response token, set by the PPO environment
    terminal: bool | None = None


@dataclasses.dataclass
class EpisodeBatch:
    """Finished episodes (one per hand, in hand order) and their turns, attempt-major."""

    hands: list
    rule: RuleLike
    episodes: list[Episode]
    turns: list[Turn]

    @property
    def solved(self) -> np.ndarray:
        """``[H]`` bool: solved within the attempts."""
        return np.array([e.solved for e in self.episodes], bool)

    @property
    def solved_first_attempt(self) -> np.ndarray:
        """``[H]`` bool: the first attempt earned +5."""
        return np.array([e.solved_first_attempt for e in self.episodes], bool)

    @property
    def attempts_used(self) -> np.ndarray:
        """``[H]`` int: graded attempts per hand."""
        return np.array([len(e.grades) for e in self.episodes], int)

    def turns_of(self, hand_index: int) -> list[Turn]:
        """The turns of one hand, in attempt order."""
        return [t for t in self.turns if t.hand_index == hand_index]


def model_generator(cfg, params, tokenizer, options: sampling.SamplingOptions, *,
                    batch_size: int | None = None, mesh=None) -> Generator:
    """A generator sampling from the model ``(cfg, params)`` (see the module docstring)."""
    stop, pad = eos_ids(tokenizer, cfg), pad_id(tokenizer, cfg)

    def generate(prompts, row_ids, key):
        return sampling.generate(cfg, params, prompts, key, options, eos_ids=stop, pad_id=pad,
                                 row_ids=row_ids, batch_size=batch_size, mesh=mesh)

    return generate


def run_episodes(cfg, params, tokenizer, renderer: Renderer, hands: Sequence, rule: RuleLike,
                 key: jax.Array, *, attempts: int = MAX_ATTEMPTS,
                 options: sampling.SamplingOptions = sampling.SamplingOptions(),
                 batch_size: int = 32, mesh=None, generator: Generator | None = None,
                 progress: bool = True, description: str = "episodes",
                 step_limit_answer: bool = False) -> EpisodeBatch:
    """Plays one revision episode per hand, all active episodes batched into each call.

    ``options`` set temperature / top-k / top-p / repetition penalty / ``max_new_tokens`` (0
    temperature: greedy); ``batch_size`` rows per sampler call; ``generator`` replaces the model
    (then ``cfg`` and ``params`` may be None); ``step_limit_answer``: see the module docstring
    (turn attempt index ``attempts``; episode statistics are unchanged by it). Returns an
    :class:`EpisodeBatch`.
    """
    from tqdm.auto import tqdm

    if generator is None:
        generator = model_generator(cfg, params, tokenizer, options, batch_size=batch_size, mesh=mesh)
    stop = eos_ids(tokenizer, cfg)
    episodes = [Episode.start(hand, rule, renderer, attempts) for hand in hands]
    turns: list[Turn] = []
    bar = tqdm(total=attempts + step_limit_answer, unit="attempt", desc=description,
               disable=not progress, leave=False)

    def answer(active, attempt):
        """``(row, prompt ids, Generation, text)`` for each episode in ``active``."""
        out = []
        attempt_key = jax.random.fold_in(key, attempt)
        for start in range(0, len(active), batch_size):
            rows = active[start:start + batch_size]
            prompts = [encode_prompt(tokenizer, episodes[i].messages()) for i in rows]
            generations = generator(prompts, rows, attempt_key)
            if len(generations) != len(rows):
                raise ValueError(f"generator returned {len(generations)} answers for {len(rows)} prompts")
            out += [(i, p, g, decode_response(tokenizer, g.tokens, stop))
                    for i, p, g in zip(rows, prompts, generations)]
            bar.set_postfix(batch=f"{start // batch_size + 1}/{math.ceil(len(active) / batch_size)}",
                            solved=sum(e.solved for e in episodes))
        bar.update(1)
        return out

    def turn(i, attempt, prompt, generation, text, **outcome) -> Turn:
        return Turn(hand_index=i, attempt=attempt, prompt_ids=np.asarray(prompt, np.int32),
                    response_ids=np.asarray(generation.tokens, np.int32),
                    response_logprobs=np.asarray(generation.logprobs, np.float32),
                    response_text=text, truncated=bool(generation.truncated), **outcome)

    for attempt in range(attempts):
        active = [i for i, episode in enumerate(episodes) if not episode.done]
        if not active:
            break
        for i, prompt, generation, text in answer(active, attempt):
            episodes[i] = episodes[i].record(text)
            verdict = episodes[i].grades[-1]
            ends = verdict.solved if step_limit_answer else episodes[i].done
            turns.append(turn(i, attempt, prompt, generation, text, reward=verdict.reward,
                              solved=verdict.solved, done=ends,
                              terminal=verdict.solved if step_limit_answer else None,
                              kind=verdict.kind, reasons=verdict.reasons))
    limited = [i for i, episode in enumerate(episodes) if not episode.solved]
    if step_limit_answer and limited:
        for i, prompt, generation, text in answer(limited, attempts):
            turns.append(turn(i, attempts, prompt, generation, text, reward=STEP_LIMIT_REWARD,
                              solved=False, done=True, terminal=False, kind=STEP_LIMIT_KIND,
                              reasons="step_limit_reached"))
    bar.close()
    return EpisodeBatch(list(hands), rule, episodes, turns)
