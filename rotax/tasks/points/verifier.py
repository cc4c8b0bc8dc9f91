"""The GeneralPoints verifier: reward and reasons of one answer (SPEC section 1, steps 1-4).

Penalties add up:

1. the formula's tokens (``[0-9]+|[+\\-*/()]``) must give back the formula exactly, else
   -3 ``illegal characters`` and grading stops (also when there is no formula);
2. -3 per grammar violation (``invalid sequence after number``, ``invalid sequence after
   operator``, ``invalid sequence before '('``, ``invalid sequence after ')'``,
   ``unmatched closing parenthesis``); an unclosed ``(`` is not a violation;
3. -2 once for invalid numbers (else -2 once for over-used numbers), -2 once more for unused
   card values;
4. only with no deduction: exact value 24 -> +5 ``Correct solution``; fails to evaluate but
   is a prefix of a known solution -> +1 ``partial solution``; else -1 at the first token where
   the formula stops being a prefix of any known solution.

Reasons are joined with ", " and end with ".". Deviations from the reference, all documented:
exact rationals (``4/(1-5/6)`` earns +5, where floats give 23.999... and 0); a formula longer
than :data:`MAX_FORMULA_CHARS` characters or :data:`MAX_FORMULA_TOKENS` tokens gets -3
``formula too long`` (no sensible answer comes close); a ``formula`` field that is not a string
counts as absent. Model text is never executed (DESIGN invariant 8).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Sequence

from rotax.tasks.points.cards import RuleLike, card_values
from rotax.tasks.points.formula import evaluate, tokenize
from rotax.tasks.points.parsing import extract_formula
from rotax.tasks.points.solver import TARGET, is_solution_prefix, solutions

MAX_FORMULA_CHARS = 256
MAX_FORMULA_TOKENS = 64

CORRECT_REWARD = 5.0
PARTIAL_REWARD = 1.0
WRONG_REWARD = -1.0
NUMBER_PENALTY = -2.0
ILLEGAL_PENALTY = -3.0

#: Outcome classes, from worst to best; see :class:`Grade`.
KINDS = ("missing", "illegal", "grammar", "numbers", "wrong", "partial", "correct")


@dataclasses.dataclass(frozen=True)
class Grade:
    """Verdict on one attempt.

    ``reward``: the summed reward; ``solved``: value exactly 24 (reward +5); ``reasons``: the
    verifier's messages joined by ", " ending with "." (the feedback text); ``formula``: the
    graded formula (``None`` when absent); ``kind``: the outcome class — ``missing`` (no
    formula), ``illegal`` (illegal characters / too long), ``grammar`` (a grammar violation,
    maybe with number penalties), ``numbers`` (only number penalties), ``wrong`` (-1),
    ``partial`` (+1), ``correct`` (+5).
    """

    reward: float
    solved: bool
    reasons: str
    formula: str | None
    kind: str


def _token_kind(token: str) -> str:
    if token in "+-*/":
        return "operator"
    if token == "(":
        return "open"
    if token == ")":
        return "close"
    return "number"


def _grammar_violations(tokens: Sequence[str]) -> list[str]:
    """Return one reason per grammar violation, scanning ``tokens`` left to right."""
    reasons = []
    previous = None  # start of formula
    open_count = 0
    for token in tokens:
        kind = _token_kind(token)
        if kind == "number":
            if previous not in (None, "operator", "open"):
                reasons.append("invalid sequence after number")
        elif kind == "operator":
            if previous not in ("number", "close"):
                reasons.append("invalid sequence after operator")
        elif kind == "open":
            if previous in (None, "operator", "open"):
                open_count += 1
            else:
                reasons.append("invalid sequence before '('")
        else:
            if previous not in ("number", "close"):
                reasons.append("invalid sequence after ')'")
            elif open_count:
                open_count -= 1
            else:
                reasons.append("unmatched closing parenthesis")
        previous = kind
    return reasons


def _number_reasons(tokens: Sequence[str], values: Sequence[int]) -> list[str]:
    """Return the reasons (at most two) why the numbers used do not match the card values."""
    available = Counter(int(v) for v in values)
    used = Counter(int(t) for t in tokens if _token_kind(t) == "number")
    reasons = []
    invalid = [n for n in used if n not in available]
    overused = [n for n in used if used[n] > available[n]]
    if invalid:
        reasons.append(f"you used invalid numbers: {invalid}")
    elif overused:
        reasons.append(f"you used numbers: {overused} too many times")
    unused = [n for n in available if available[n] > used[n]]
    if unused:
        reasons.append(f"you didn't use numbers: {unused}")
    return reasons


def _mismatch_reason(tokens: Sequence[str], values: Sequence[int]) -> str:
    """Return the -1 reason: where the formula stops being a prefix of every known solution."""
    register = ""
    for token in tokens:
        if not is_solution_prefix(register + token, values):
            if register:
                return f"{register} is partially correct but the full formula does not match " \
                       f"any solution"
            return "your formula does not match any solution"
        register += token
    # Unreachable with exact arithmetic: a complete prefix of a solution is that solution.
    return "your formula does not match any solution"


def _grade(reward: float, reasons: list[str], formula: str | None, kind: str) -> Grade:
    return Grade(reward=float(reward), solved=kind == "correct",
                 reasons=", ".join(reasons) + ".", formula=formula, kind=kind)


def grade_formula(formula: str | None, values: Sequence[int]) -> Grade:
    """Return the :class:`Grade` of ``formula`` (already cut at ``=``) for the card ``values``.

    ``values`` are the four card values under the active rule (ints in 1..13). ``None`` (no
    formula) grades as illegal characters. Never raises on any ``formula`` string.
    """
    if not isinstance(formula, str):
        return _grade(ILLEGAL_PENALTY, ["illegal characters"], None, "missing")
    tokens = tokenize(formula)
    if "".join(tokens) != formula:
        return _grade(ILLEGAL_PENALTY, ["illegal characters"], formula, "illegal")
    if len(formula) > MAX_FORMULA_CHARS or len(tokens) > MAX_FORMULA_TOKENS:
        return _grade(ILLEGAL_PENALTY, ["formula too long"], formula, "illegal")
    grammar = _grammar_violations(tokens)
    numbers = _number_reasons(tokens, values)
    if grammar or numbers:
        reward = ILLEGAL_PENALTY * len(grammar) + NUMBER_PENALTY * len(numbers)
        return _grade(reward, grammar + numbers, formula, "grammar" if grammar else "numbers")
    value = evaluate(tokens)
    if value is not None and value == TARGET:
        return _grade(CORRECT_REWARD, ["Correct solution"], formula, "correct")
    if value is None and is_solution_prefix(formula, values):
        return _grade(PARTIAL_REWARD, ["partial solution"], formula, "partial")
    return _grade(WRONG_REWARD, [_mismatch_reason(tokens, values)], formula, "wrong")


def grade(response: str, cards: Sequence[str], rule: RuleLike) -> Grade:
    """Return the :class:`Grade` of a JSON-like model ``response`` for ``cards`` under ``rule``.

    The formula is read with :func:`rotax.tasks.points.parsing.extract_formula` (JSON first,
    then a pattern; cut at ``=``). Never raises on any ``response`` string.
    """
    return grade_formula(extract_formula(response), card_values(cards, rule))


def known_solutions(cards: Sequence[str], rule: RuleLike) -> tuple[str, ...]:
    """Return every known solution string of ``cards`` under ``rule`` (sorted)."""
    return solutions(card_values(cards, rule))
