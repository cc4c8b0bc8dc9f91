"""GeneralPoints (the 24-point card game), text only: the public API of the task.

Pure Python (+ numpy in the solver); no jax. The pieces live in sibling modules and are
re-exported here:

* cards, rules, seeded hands — :mod:`rotax.tasks.points.cards`
  (``FaceRule``, ``Rule.ID``/``Rule.OOD``, ``Deal``, ``deal_hand``, ``evaluation_hands``,
  ``face_free_hands``, ``same_hands_new_rule``, ``hands_fingerprint``);
* the exact solver — :mod:`rotax.tasks.points.solver` (``solutions``, ``is_solvable``,
  ``canonical_solution``);
* answer parsing — :mod:`rotax.tasks.points.parsing` (``parse_answer``, ``extract_formula``);
* the verifier — :mod:`rotax.tasks.points.verifier` (``grade``, ``grade_formula``, ``Grade``);
* prompt/answer formats — :mod:`rotax.tasks.points.render` (``JsonChatRenderer``,
  ``CompactRenderer``);
* and here: :class:`Episode` (sequential revision, up to 5 attempts) and :func:`sft_example`.

Example::

    hands = evaluation_hands(Rule.OOD)                 # 234 seeded hands, each with a face
    renderer = JsonChatRenderer()
    episode = Episode.start(hands[0], Rule.OOD, renderer)
    text = tokenizer.apply_chat_template(episode.messages(), add_generation_prompt=True,
                                         tokenize=False)
    episode = episode.record(model_answer)             # grades it; adds feedback if failed
    episode.done, episode.solved, episode.rewards
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from rotax.tasks.points.cards import (EXTENDED_NUMBER_RANKS, FACE_CARDS, STANDARD_RANKS, Deal,
                                      FaceRule, Hand, Rule, RuleLike, as_face_rule, card_values,
                                      deal_hand, deal_hands, default_deal, evaluation_hands,
                                      face_free_hands, hands_fingerprint, rank_number,
                                      same_hands_new_rule)
from rotax.tasks.points.parsing import ParsedAnswer, extract_formula, parse_answer
from rotax.tasks.points.render import (DEFAULT_TEMPLATE, CompactRenderer, JsonChatRenderer,
                                       Renderer, face_card_clause, feedback_text)
from rotax.tasks.points.solver import (TARGET, all_value_multisets, canonical_solution,
                                       is_solvable, solutions)
from rotax.tasks.points.verifier import (CORRECT_REWARD, KINDS, Grade, grade, grade_formula,
                                         known_solutions)

__all__ = [
    "CORRECT_REWARD", "DEFAULT_TEMPLATE", "EXTENDED_NUMBER_RANKS", "FACE_CARDS", "KINDS",
    "MAX_ATTEMPTS", "STANDARD_RANKS", "TARGET", "CompactRenderer", "Deal", "Episode",
    "FaceRule", "Grade", "Hand", "JsonChatRenderer", "ParsedAnswer", "Renderer", "Rule",
    "RuleLike", "all_value_multisets", "as_face_rule", "canonical_solution", "card_values",
    "deal_hand", "deal_hands", "default_deal", "evaluation_hands", "extract_formula",
    "face_card_clause", "face_free_hands", "feedback_text", "grade", "grade_formula",
    "grade_response", "hands_fingerprint", "is_solvable", "known_solutions", "parse_answer",
    "rank_number", "same_hands_new_rule", "sft_example", "solutions",
]

#: Graded attempts per hand in a revision episode.
MAX_ATTEMPTS = 5


def grade_response(response: str, hand: Sequence[str], rule: RuleLike,
                   renderer: Renderer) -> Grade:
    """Return the :class:`Grade` of ``response`` read with ``renderer``'s answer format."""
    return grade_formula(renderer.extract_formula(response), card_values(hand, rule))


@dataclasses.dataclass(frozen=True)
class Episode:
    """Immutable state of one sequential-revision episode (no model calls inside).

    Start with :meth:`start`, feed :meth:`messages` to the model, pass its answer to
    :meth:`record` (which returns the next state). The episode is ``done`` after a correct
    answer (+5) or ``max_attempts`` graded attempts.
    """

    hand: Hand
    rule: RuleLike
    renderer: Renderer
    max_attempts: int = MAX_ATTEMPTS
    responses: tuple[str, ...] = ()
    grades: tuple[Grade, ...] = ()

    @classmethod
    def start(cls, hand: Sequence[str], rule: RuleLike, renderer: Renderer,
              max_attempts: int = MAX_ATTEMPTS) -> "Episode":
        """Return a fresh episode for ``hand`` under ``rule``."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        return cls(tuple(hand), rule, renderer, max_attempts)

    @property
    def done(self) -> bool:
        """Whether the last attempt was correct or no attempts are left."""
        return self.solved or len(self.grades) >= self.max_attempts

    @property
    def solved(self) -> bool:
        """Whether some attempt earned +5."""
        return any(g.solved for g in self.grades)

    @property
    def solved_first_attempt(self) -> bool:
        """Whether the first attempt earned +5."""
        return bool(self.grades) and self.grades[0].solved

    @property
    def rewards(self) -> list[float]:
        """Return the reward of each attempt so far."""
        return [g.reward for g in self.grades]

    def messages(self) -> list[dict]:
        """Return the dialogue so far as chat messages ``[{"role", "content"}, ...]``.

        The user prompt, then per attempt the assistant's answer and, if it failed, a user
        turn ``"You failed this trial because {reasons}"``. Before the episode is done this is
        exactly the input for the next attempt. A plain-text prompt (e.g. the compact
        renderer) becomes one user message.
        """
        prompt = self.renderer.render_prompt(self.hand, self.rule)
        dialogue = [{"role": "user", "content": prompt}] if isinstance(prompt, str) \
            else [dict(message) for message in prompt]
        for response, verdict in zip(self.responses, self.grades):
            dialogue.append({"role": "assistant", "content": response})
            if not verdict.solved:
                dialogue.append({"role": "user",
                                 "content": self.renderer.render_feedback(verdict.reasons)})
        return dialogue

    def record(self, response: str) -> "Episode":
        """Return the episode after grading ``response``; ``ValueError`` if already done."""
        if self.done:
            raise ValueError("the episode is over; start a new one")
        verdict = grade_response(response, self.hand, self.rule, self.renderer)
        return dataclasses.replace(self, responses=self.responses + (response,),
                                   grades=self.grades + (verdict,))


def sft_example(hand: Sequence[str], rule: RuleLike, renderer: Renderer,
                rng: random.Random | None = None,
                solution_choice: str = "canonical") -> tuple:
    """Return ``(prompt, answer)``: the renderer's prompt for ``hand`` and a correct answer.

    ``solution_choice='canonical'`` uses :func:`canonical_solution` of the card values in hand
    order (deterministic); ``'sorted'`` the canonical solution of the values in ascending order
    (a function of the value multiset alone, i.e. of the compact answer's scratchpad);
    ``'random'`` draws uniformly from all known solutions with ``rng``.
    Raises ``ValueError`` when the hand cannot make 24 under ``rule``.
    """
    values = card_values(hand, rule)
    if solution_choice == "canonical":
        formula = canonical_solution(values)
    elif solution_choice == "sorted":
        formula = canonical_solution(sorted(values))
    elif solution_choice == "random":
        if rng is None:
            raise ValueError("solution_choice='random' needs an rng")
        known = solutions(values)
        formula = known[rng.randrange(len(known))] if known else None
    else:
        raise ValueError(f"solution_choice must be 'canonical', 'sorted' or 'random', "
                         f"got {solution_choice!r}")
    if formula is None:
        raise ValueError(f"hand {list(hand)} cannot make {TARGET} under {as_face_rule(rule)}")
    return renderer.render_prompt(hand, rule), renderer.render_answer(hand, rule, formula)
