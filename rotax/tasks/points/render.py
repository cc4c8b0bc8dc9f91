"""Renderers: how a hand becomes a prompt, a solution becomes an answer, and back.

A renderer has four methods (see :class:`Renderer`): ``render_prompt(hand, rule)``,
``render_answer(hand, rule, formula)``, ``render_feedback(reasons)`` and
``parse_answer(response)`` / ``extract_formula(response)``.

* :class:`JsonChatRenderer` — the study's form: one user chat message with a task description
  (including the face-card rule sentence), ``Cards: ['A', '7', '10', 'K']`` and a JSON output
  skeleton with ``cards``, ``number``, ``formula``; answers are JSON. rotax's own wording, or a
  user-supplied template file (for the reference's exact prompt). The caller applies the
  model's chat template: ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``.
* :class:`CompactRenderer` — the toy study's word-level form, every token space-separated:
  prompt ``J 11 Q 12 K 13 | A 7 10 K``, answer ``1 7 10 13 : ( 10 - 7 ) * ...`` (the card
  values under the rule, sorted, as a scratchpad; then the formula).
"""

from __future__ import annotations

import json
import os
import re
from typing import Protocol, Sequence, Union

from rotax.tasks.points.cards import FACE_CARDS, STANDARD_RANKS, Rule, RuleLike, as_face_rule
from rotax.tasks.points.formula import tokenize
from rotax.tasks.points.parsing import (MAX_RESPONSE_CHARS, PARSERS, ParsedAnswer, cut_at_equals,
                                        parse_reference_answer)
from rotax.tasks.points.parsing import parse_answer as parse_json_answer
from rotax.tasks.points.solver import TARGET

Messages = list  # list[dict[str, str]] with keys "role" and "content"
Prompt = Union[Messages, str]


class Renderer(Protocol):
    """What the task, SFT data and revision episodes need from a prompt/answer format."""

    def render_prompt(self, hand: Sequence[str], rule: RuleLike) -> Prompt:
        """Return the prompt: chat messages (``[{"role", "content"}]``) or plain text."""

    def render_answer(self, hand: Sequence[str], rule: RuleLike, formula: str) -> str:
        """Return the target answer text for ``hand`` solved by ``formula``."""

    def render_feedback(self, reasons: str) -> str:
        """Return the user turn after a failed attempt with the verifier's ``reasons``."""

    def parse_answer(self, response: str) -> ParsedAnswer:
        """Return the fields of ``response`` (formula cut at ``=``, ``None`` when absent)."""

    def extract_formula(self, response: str) -> str | None:
        """Return the formula of ``response`` cut at ``=``, or ``None`` when absent."""


def face_card_clause(rule: RuleLike) -> str:
    """Return the rule clause, e.g. ``'J', 'Q', and 'K' count as '10'`` (no final period).

    For Rule.OOD: ``'J', 'Q', and 'K' count as '11', '12', and '13' respectively`` — the same
    clause the reference's template expects in its ``{face_card_msg}`` slot.
    """
    jack, queen, king = as_face_rule(rule).face_values
    if jack == queen == king:
        return f"'J', 'Q', and 'K' count as '{jack}'"
    return f"'J', 'Q', and 'K' count as '{jack}', '{queen}', and '{king}' respectively"


def feedback_text(reasons: str) -> str:
    """Return ``"You failed this trial because {reasons}"`` (``reasons`` ends with ".")."""
    return f"You failed this trial because {reasons}"


DEFAULT_TEMPLATE = """[Task]
You are an expert player of the {target_number}-point card game. You are dealt four cards.
Here {face_card_msg}; use each card exactly once.
Give a formula that equals {target_number}, using the numbers of the cards and the symbols \
'+', '-', '*', '/', '(', ')' and '='.

[Input]
Cards: {cards}

[Output]
Answer with one JSON object:
{{"cards": [the four cards], "number": [the number each card counts as], \
"formula": "a formula that equals {target_number}"}}
"""

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]+)\}|[{}]")
_RULE_NAMES = ("face_card_msg", "rule")
_TARGET_NAMES = ("target_number", "target")


def fill_template(template: str, fields: dict) -> str:
    """Return ``template`` with ``{name}`` replaced from ``fields`` and ``{{``/``}}`` unescaped.

    Raises ``KeyError`` for a placeholder not in ``fields`` and ``ValueError`` for a lone
    brace (as ``str.format`` would). Only plain names are replaced — no attribute or index
    lookups (unlike ``str.format``).
    """
    def replace(match: re.Match) -> str:
        if match.group(0) == "{{":
            return "{"
        if match.group(0) == "}}":
            return "}"
        name = match.group(1)
        if name is None:
            raise ValueError(f"lone {match.group(0)!r} at {match.start()} in the template; "
                             f"write {match.group(0) * 2!r} for a literal brace")
        if name not in fields:
            raise KeyError(f"unknown placeholder {{{name}}}; known: {sorted(fields)}")
        return str(fields[name])

    return _PLACEHOLDER.sub(replace, template)


class JsonChatRenderer:
    """The study's prompt (one user turn) and JSON answers.

    ``template`` uses the placeholders ``{cards}`` (``['A', '7', '10', 'K']``),
    ``{face_card_msg}`` or ``{rule}`` (the :func:`face_card_clause`) and optionally
    ``{target_number}`` or ``{target}`` (24); ``{{`` and ``}}`` are literal braces — so the
    reference's language prompt can be used as is. ``parser``: ``lenient`` (rotax's
    :func:`~rotax.tasks.points.parsing.parse_answer`) or ``reference`` (the study's strict
    :func:`~rotax.tasks.points.parsing.parse_reference_answer`), for grading answers.
    """

    def __init__(self, template: str = DEFAULT_TEMPLATE, parser: str = "lenient"):
        if parser not in PARSERS:
            raise ValueError(f"answer parser {parser!r}: choose one of {PARSERS}")
        self.parser = parser
        names = {m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)}
        if "cards" not in names or not names & set(_RULE_NAMES):
            raise ValueError("a prompt template needs {cards} and {face_card_msg} (or {rule})")
        fill_template(template, self._fields(("A", "2", "3", "4"), Rule.ID))  # unknown names
        self.template = template

    @classmethod
    def from_template_file(cls, path: Union[str, os.PathLike], parser: str = "lenient") -> "JsonChatRenderer":
        """Return a renderer whose prompt is the UTF-8 template file at ``path``."""
        with open(path, encoding="utf-8") as handle:
            return cls(handle.read(), parser)

    @staticmethod
    def _fields(hand: Sequence[str], rule: RuleLike) -> dict:
        clause = face_card_clause(rule)
        fields = {"cards": str([str(card) for card in hand])}
        fields.update({name: clause for name in _RULE_NAMES})
        fields.update({name: TARGET for name in _TARGET_NAMES})
        return fields

    def prompt_text(self, hand: Sequence[str], rule: RuleLike) -> str:
        """Return the prompt's text (the content of its single user message)."""
        return fill_template(self.template, self._fields(hand, rule))

    def render_prompt(self, hand: Sequence[str], rule: RuleLike) -> Messages:
        """Return ``[{"role": "user", "content": prompt_text}]`` (no system prompt)."""
        return [{"role": "user", "content": self.prompt_text(hand, rule)}]

    def render_answer(self, hand: Sequence[str], rule: RuleLike, formula: str) -> str:
        """Return e.g. ``{"cards": ["K", "5", "A", "8"], "number": [10, 5, 1, 8],
        "formula": "(10-5-1)*8=24"}`` (``=24`` is appended when ``formula`` has no ``=``)."""
        if "=" not in formula:
            formula = f"{formula}={TARGET}"
        values = as_face_rule(rule).values(hand)
        return json.dumps({"cards": list(hand), "number": list(values), "formula": formula})

    def render_feedback(self, reasons: str) -> str:
        """Return ``"You failed this trial because {reasons}"``."""
        return feedback_text(reasons)

    def parse_answer(self, response: str) -> ParsedAnswer:
        """Return the JSON-like answer's fields (see :mod:`rotax.tasks.points.parsing`)."""
        if self.parser == "reference":
            return parse_reference_answer(response)
        return parse_json_answer(response)

    def extract_formula(self, response: str) -> str | None:
        """Return the answer's formula cut at ``=``, or ``None`` when absent."""
        return self.parse_answer(response).formula


class CompactRenderer:
    """Word-level prompts and answers for the toy study; every token is space-separated.

    Prompt: ``J 11 Q 12 K 13 | A 7 10 K`` (the rule's face values, then the cards, each card
    written as ``card_prefix + rank``). Answer: ``1 7 10 13 : ( 10 - 7 ) * ...`` — the card
    values under the rule in ascending order, ``:``, then the formula's tokens. The formula
    is everything after the first ``:`` with the spaces removed, cut at ``=``.
    """

    SEPARATOR = "|"
    ANSWER_MARK = ":"

    def __init__(self, card_prefix: str = ""):
        if any(ch.isspace() for ch in card_prefix):
            raise ValueError("card_prefix may not contain whitespace")
        self.card_prefix = card_prefix

    def render_prompt(self, hand: Sequence[str], rule: RuleLike) -> str:
        """Return ``"J j Q q K k | c1 c2 c3 c4"`` for face values j, q, k and cards c1..c4."""
        faces = " ".join(f"{card} {value}"
                         for card, value in zip(FACE_CARDS, as_face_rule(rule).face_values))
        cards = " ".join(self.card_prefix + card for card in hand)
        return f"{faces} {self.SEPARATOR} {cards}"

    def render_answer(self, hand: Sequence[str], rule: RuleLike, formula: str) -> str:
        """Return ``"v1 v2 v3 v4 : t1 t2 ..."``: sorted card values, then formula tokens."""
        values = sorted(as_face_rule(rule).values(hand))
        tokens = tokenize(cut_at_equals(formula))
        return " ".join([*map(str, values), self.ANSWER_MARK, *tokens])

    def render_feedback(self, reasons: str) -> str:
        """Return ``"You failed this trial because {reasons}"``."""
        return feedback_text(reasons)

    def parse_answer(self, response: str) -> ParsedAnswer:
        """Return the scratchpad values as ``number`` and the formula (``None`` without ``:``)."""
        if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
            return ParsedAnswer(formula=None)
        words = response.split()
        if self.ANSWER_MARK not in words:
            return ParsedAnswer(formula=None)
        mark = words.index(self.ANSWER_MARK)
        number = [int(w) if w.isascii() and w.isdigit() and len(w) < 8 else w
                  for w in words[:mark]]
        return ParsedAnswer(formula=cut_at_equals("".join(words[mark + 1:])), number=number)

    def extract_formula(self, response: str) -> str | None:
        """Return the formula after ``:`` with spaces removed, cut at ``=``; ``None`` if no ``:``."""
        return self.parse_answer(response).formula

    def vocabulary(self, ranks: Sequence[str] = STANDARD_RANKS, max_value: int = 13) -> list[str]:
        """Return every word this renderer emits for a deck of ``ranks``: cards, face names,
        numbers ``1..max_value`` and symbols, without duplicates, in a fixed order."""
        cards = [self.card_prefix + rank for rank in ranks]
        words = [*cards, *FACE_CARDS, *(str(n) for n in range(1, max_value + 1)),
                 "+", "-", "*", "/", "(", ")", self.SEPARATOR, self.ANSWER_MARK]
        return list(dict.fromkeys(words))
