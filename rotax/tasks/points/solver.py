"""Exact solver for the 24-point game: every solution string of four card values.

The solution strings are the reference's "known solutions", against which the verifier checks
partial answers: every distinct ordering of the four values, every operator triple over
``+ - * /``, and each of seven bracket placements (no brackets, ``(a?b)?c?d``, ``(a?b?c)?d``,
``a?(b?c)?d``, ``a?(b?c?d)``, ``a?b?(c?d)`` and ``(a?b)?(c?d)``), written without spaces, whose
exact value is 24 (a division by zero anywhere disqualifies the expression), e.g.
``(10-5-1)*8`` or ``8/(3-8/3)``.

Evaluation is exact and vectorized: each (bracket placement, operator triple) template is parsed
once into three binary instructions; a value multiset's orderings are then evaluated for all
templates sharing one instruction shape at once, as unreduced integer fractions in ``int64``
(numerators and denominators stay below ``2**3 * 13**4`` for values up to 13). Results are
cached per sorted value multiset.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from typing import Sequence

import numpy as np

from rotax.tasks.points.formula import OPERATORS, parse_tree

TARGET = 24
#: Largest card value the solver accepts (keeps the int64 arithmetic exact).
MAX_VALUE = 13

# Bracket placements over the slots {0}{o0}{1}{o1}{2}{o2}{3}, in the reference's order.
_BRACKET_FORMS = (
    "{0}{o0}{1}{o1}{2}{o2}{3}",
    "({0}{o0}{1}){o1}{2}{o2}{3}",
    "({0}{o0}{1}{o1}{2}){o2}{3}",
    "{0}{o0}({1}{o1}{2}){o2}{3}",
    "{0}{o0}({1}{o1}{2}{o2}{3})",
    "{0}{o0}{1}{o1}({2}{o2}{3})",
    "({0}{o0}{1}){o1}({2}{o2}{3})",
)


def _instructions(tree, program: list) -> int:
    """Append ``tree``'s binary operations to ``program`` in post-order; return its slot.

    Slots 0-3 are the four leaves (the tree's leaves are the numbers 1-4 = slot + 1); slot
    ``4 + i`` is the result of instruction ``i``.
    """
    if isinstance(tree, int):
        return tree - 1
    operator, left, right = tree
    left_slot = _instructions(left, program)
    right_slot = _instructions(right, program)
    program.append((OPERATORS.index(operator), left_slot, right_slot))
    return 3 + len(program)


@functools.lru_cache(maxsize=1)
def _templates() -> tuple:
    """Return ``(texts, groups)``: every template's format string, and per instruction shape
    ``(shape, template_indices[T], operator_codes[T, 3])``."""
    texts = []
    by_shape: dict = {}
    for form in _BRACKET_FORMS:
        for ops in itertools.product(OPERATORS, repeat=3):
            text = form.format("{0}", "{1}", "{2}", "{3}", o0=ops[0], o1=ops[1], o2=ops[2])
            program: list = []
            _instructions(parse_tree(re.findall(r"[0-9]|[^0-9]", form.format(
                "1", "2", "3", "4", o0=ops[0], o1=ops[1], o2=ops[2]))), program)
            shape = tuple((left, right) for _, left, right in program)
            codes = tuple(code for code, _, _ in program)
            by_shape.setdefault(shape, []).append((len(texts), codes))
            texts.append(text)
    groups = tuple(
        (shape, np.array([i for i, _ in rows]), np.array([c for _, c in rows], dtype=np.int64))
        for shape, rows in by_shape.items())
    return tuple(texts), groups


def _solve_sorted(values: tuple[int, ...]) -> tuple[str, ...]:
    texts, groups = _templates()
    orderings = sorted(set(itertools.permutations(values)))
    leaves = np.array(orderings, dtype=np.int64)  # [P, 4]
    found = []
    for shape, template_ids, codes in groups:
        numerators = [leaves[:, i:i + 1] for i in range(4)]  # each [P, 1]
        denominators = [np.ones_like(leaves[:, :1])] * 4
        invalid = np.zeros((len(orderings), len(template_ids)), dtype=bool)
        for step, (left, right) in enumerate(shape):
            code = codes[None, :, step]  # [1, T]
            n1, d1 = numerators[left], denominators[left]
            n2, d2 = numerators[right], denominators[right]
            cross = n1 * d2
            numerator = np.select(
                [code == 0, code == 1, code == 2],
                [cross + n2 * d1, cross - n2 * d1, n1 * n2], default=cross)
            denominator = np.where(code == 3, d1 * n2, d1 * d2)
            invalid = invalid | ((code == 3) & (n2 == 0))
            numerators.append(numerator)
            denominators.append(denominator)
        hits = ~invalid & (numerators[-1] == TARGET * denominators[-1])
        for row, column in zip(*np.nonzero(hits)):
            found.append(texts[template_ids[column]].format(*orderings[row]))
    return tuple(sorted(found))


def _validated_key(values: Sequence[int]) -> tuple[int, ...]:
    key = tuple(sorted(int(v) for v in values))
    if len(key) != 4 or not all(1 <= v <= MAX_VALUE for v in key):
        raise ValueError(f"expected 4 card values in 1..{MAX_VALUE}, got {list(values)}")
    return key


@functools.lru_cache(maxsize=None)
def _solutions_cached(key: tuple[int, ...]) -> tuple[str, ...]:
    return _solve_sorted(key)


def solutions(values: Sequence[int]) -> tuple[str, ...]:
    """Return every known solution string of the four ``values`` (order-free), sorted.

    Raises ``ValueError`` unless ``values`` are four integers in 1..13. The result is cached
    per value multiset; an empty tuple means the values cannot make 24.
    """
    return _solutions_cached(_validated_key(values))


def is_solvable(values: Sequence[int]) -> bool:
    """Return whether the four ``values`` can make 24 (see :func:`solutions`)."""
    return bool(solutions(values))


def is_solution_prefix(prefix: str, values: Sequence[int]) -> bool:
    """Return whether ``prefix`` starts at least one known solution string of ``values``."""
    known = solutions(values)
    index = bisect.bisect_left(known, prefix)
    return index < len(known) and known[index].startswith(prefix)


def numbers_in(solution: str) -> tuple[int, ...]:
    """Return the numbers of a formula string in the order they are written."""
    return tuple(int(n) for n in re.findall(r"[0-9]+", solution))


def canonical_solution(values: Sequence[int]) -> str | None:
    """Return one deterministic solution of ``values``, or ``None`` if there is none.

    Prefers solutions that use the values in the given order; among candidates the shortest
    string wins, ties broken lexicographically. E.g. ``[10, 5, 1, 8] -> "(10-5-1)*8"``.
    """
    known = solutions(values)
    in_order = [s for s in known if numbers_in(s) == tuple(int(v) for v in values)]
    pool = in_order or known
    return min(pool, key=lambda s: (len(s), s)) if pool else None


def all_value_multisets(max_value: int = 13) -> list[tuple[int, int, int, int]]:
    """Return every sorted multiset of 4 values in ``1..max_value`` (1,820 for 13)."""
    return list(itertools.combinations_with_replacement(range(1, max_value + 1), 4))
