"""GeneralPoints solver and verifier against independent oracles.

Oracles written here, independently of rotax: a recursive pair-combination solver (any two
values combined, any order, exact Fractions); the reference's way of enumerating solution
strings (bracket insertion points into the token list, Python arithmetic over Fractions on our
own generated strings only); and the reward rules of SPEC section 1 re-implemented naively.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotax.tasks import points as P
from rotax.tasks.points.solver import numbers_in

ALL_MULTISETS = list(itertools.combinations_with_replacement(range(1, 14), 4))


# ----------------------------------------------------------------------------- oracles
@functools.lru_cache(maxsize=None)
def _reachable(values: tuple) -> bool:
    """Whether the sorted Fractions ``values`` can make 24 by repeatedly combining two."""
    if len(values) == 1:
        return values[0] == 24
    for i, j in itertools.combinations(range(len(values)), 2):
        a, b = values[i], values[j]
        rest = [values[k] for k in range(len(values)) if k not in (i, j)]
        results = {a + b, a - b, b - a, a * b}
        if b:
            results.add(a / b)
        if a:
            results.add(b / a)
        if any(_reachable(tuple(sorted(rest + [r]))) for r in results):
            return True
    return False


def brute_force_solvable(values) -> bool:
    return _reachable(tuple(sorted(Fraction(v) for v in values)))


def _insertion_templates() -> list:
    """Reference-style templates: lists of tokens with bracket insertion points."""
    brackets = [()]
    length = 7  # a ? b ? c ? d
    for x in range(0, length, 2):
        for y in range(x + 4, length + 2, 2):
            if (x, y) != (0, length + 1):
                brackets.append((x, y))
    brackets.append((0, 4, 6, 10))
    return brackets


@functools.lru_cache(maxsize=1)
def _compiled_templates() -> list:
    """(format string, function of four Fractions) per operator triple and bracket placement."""
    out = []
    for ops in itertools.product("+-*/", repeat=3):
        base = ["{0}", ops[0], "{1}", ops[1], "{2}", ops[2], "{3}"]
        for places in _insertion_templates():
            expr = list(base)
            for point, symbol in zip(places, "()" * (len(places) // 2)):
                expr.insert(point, symbol)
            text = "".join(expr)
            source = "lambda a, b, c, d: " + text.format("a", "b", "c", "d")
            out.append((text, eval(source, {"__builtins__": {}})))  # noqa: S307 (our text)
    return out


def reference_style_solutions(values) -> set:
    """Every solution string, enumerated as the reference does (insertion into a token list)."""
    out = set()
    for perm in set(itertools.permutations(values)):
        fractions = [Fraction(v) for v in perm]
        for text, function in _compiled_templates():
            try:
                value = function(*fractions)
            except ZeroDivisionError:
                continue
            if value == 24:
                out.add(text.format(*perm))
    return out


def _fraction_eval(text: str):
    """Python arithmetic over Fractions of a formula WE generated (test oracle only)."""
    return eval(re.sub(r"[0-9]+", lambda m: f"F({m.group()})", text),  # noqa: S307
                {"F": Fraction, "__builtins__": {}})


def naive_reward(formula, values):
    """SPEC section 1 steps 1-4, written out plainly (Fractions instead of floats)."""
    if formula is None:
        return -3, "illegal characters."
    tokens = re.findall(r"[0-9]+|[+\-*/()]", formula)
    if "".join(tokens) != formula:
        return -3, "illegal characters."
    reward, reasons, prev, depth = 0, [], None, 0
    for t in tokens:
        kind = ("op" if t in "+-*/" else "open" if t == "(" else "close" if t == ")"
                else "num")
        if kind == "num" and prev not in (None, "op", "open"):
            reward, reasons = reward - 3, reasons + ["invalid sequence after number"]
        elif kind == "op" and prev not in ("num", "close"):
            reward, reasons = reward - 3, reasons + ["invalid sequence after operator"]
        elif kind == "open":
            if prev in (None, "op", "open"):
                depth += 1
            else:
                reward, reasons = reward - 3, reasons + ["invalid sequence before '('"]
        elif kind == "close":
            if prev not in ("num", "close"):
                reward, reasons = reward - 3, reasons + ["invalid sequence after ')'"]
            elif depth:
                depth -= 1
            else:
                reward, reasons = reward - 3, reasons + ["unmatched closing parenthesis"]
        prev = kind
    used = [int(t) for t in tokens if t.isdigit()]
    invalid = list(dict.fromkeys(n for n in used if n not in values))
    over = list(dict.fromkeys(n for n in used if used.count(n) > list(values).count(n)))
    unused = list(dict.fromkeys(v for v in values if list(values).count(v) > used.count(v)))
    if invalid:
        reward, reasons = reward - 2, reasons + [f"you used invalid numbers: {invalid}"]
    elif over:
        reward, reasons = reward - 2, reasons + [f"you used numbers: {over} too many times"]
    if unused:
        reward, reasons = reward - 2, reasons + [f"you didn't use numbers: {unused}"]
    if reward:
        return reward, ", ".join(reasons) + "."
    known = P.solutions(values)
    try:
        if _fraction_eval(formula) == 24:
            return 5, "Correct solution."
    except Exception:  # SyntaxError, ZeroDivisionError: "fails to evaluate"
        if any(s.startswith(formula) for s in known):
            return 1, "partial solution."
    register = ""
    for t in tokens:
        if not any(s.startswith(register + t) for s in known):
            if register:
                return -1, (f"{register} is partially correct but the full formula does not "
                            f"match any solution.")
            return -1, "your formula does not match any solution."
        register += t
    return 0, "."


# ----------------------------------------------------------------------------- solver
def test_solvable_multisets_match_brute_force_and_count():
    ours = {m for m in ALL_MULTISETS if P.is_solvable(m)}
    oracle = {m for m in ALL_MULTISETS if brute_force_solvable(m)}
    assert len(ALL_MULTISETS) == 1820
    assert ours == oracle
    assert len(ours) == 1362


def test_solution_strings_match_reference_enumeration_on_a_sample():
    rng = random.Random(7)
    sample = rng.sample(ALL_MULTISETS, 60) + [(3, 3, 8, 8), (1, 5, 5, 5), (4, 1, 5, 6),
                                               (1, 1, 1, 1), (13, 13, 13, 13), (1, 2, 3, 4)]
    for values in sample:
        assert set(P.solutions(values)) == reference_style_solutions(values), values


def test_solutions_are_exact_and_order_free():
    assert "8/(3-8/3)" in P.solutions([3, 8, 3, 8])
    assert P.solutions([3, 3, 8, 8]) == ("8/(3-8/3)",)
    assert "4/(1-5/6)" in P.solutions([6, 5, 1, 4])
    assert P.solutions([10, 5, 1, 8]) == P.solutions([1, 5, 8, 10])
    assert not P.is_solvable([1, 1, 1, 1])
    for values in random.Random(3).sample(ALL_MULTISETS, 60):
        for s in P.solutions(values):
            assert " " not in s and _fraction_eval(s) == 24
            assert sorted(numbers_in(s)) == list(values)
    with pytest.raises(ValueError):
        P.solutions([1, 2, 3])
    with pytest.raises(ValueError):
        P.solutions([1, 2, 3, 14])


def test_canonical_solution_prefers_hand_order_and_is_a_solution():
    assert P.canonical_solution([3, 8, 3, 8]) == "8/(3-8/3)"
    assert P.canonical_solution([1, 1, 1, 1]) is None
    for values in random.Random(5).sample(ALL_MULTISETS, 100):
        values = list(values)
        random.Random(sum(values)).shuffle(values)
        best = P.canonical_solution(values)
        assert (best is None) == (not P.is_solvable(values))
        if best is not None:
            assert best in P.solutions(values)
            in_order = [s for s in P.solutions(values)
                        if list(numbers_in(s)) == values]
            if in_order:
                assert list(numbers_in(best)) == values


# ----------------------------------------------------------------------------- verifier vs solver
def _cards_for(values, rule, rng):
    """A hand whose values under ``rule`` are ``values`` (10 may become 10/J/Q/K under ID)."""
    by_value = {}
    for rank in P.STANDARD_RANKS:
        by_value.setdefault(P.card_values([rank], rule)[0], []).append(rank)
    return [rng.choice(by_value[v]) for v in values]


def test_every_solution_of_every_multiset_grades_plus_five():
    count = 0
    for values in ALL_MULTISETS:
        for s in P.solutions(values):
            verdict = P.grade_formula(s, values)
            assert verdict.reward == 5.0 and verdict.solved and verdict.kind == "correct", s
            count += 1
    assert count > 70_000


@pytest.mark.parametrize("rule", [P.Rule.ID, P.Rule.OOD])
def test_grading_whole_responses_agrees_with_solver_under_both_rules(rule):
    rng = random.Random(11)
    top = 10 if rule is P.Rule.ID else 13
    multisets = [m for m in ALL_MULTISETS if max(m) <= top]
    assert len(multisets) == (715 if rule is P.Rule.ID else 1820)
    renderer = P.JsonChatRenderer()
    for values in multisets:
        cards = _cards_for(values, rule, rng)
        known = P.solutions(values)
        for s in rng.sample(known, min(3, len(known))):
            verdict = P.grade(renderer.render_answer(cards, rule, s), cards, rule)
            assert verdict.reward == 5.0 and verdict.formula == s
        # a wrong but well-formed formula (all numbers used once) never earns +5
        wrong = "+".join(map(str, values))
        if wrong not in known:
            assert P.grade(f'{{"formula": "{wrong}=24"}}', cards, rule).reward < 5


# ----------------------------------------------------------------------------- the reward table
ROWS = [
    # formula, values, reward, reasons, kind
    ("10 -5+1+8", [10, 5, 1, 8], -3, "illegal characters.", "illegal"),
    ("10x5", [10, 5, 1, 8], -3, "illegal characters.", "illegal"),
    ("10\u00f75+1+8", [10, 5, 1, 8], -3, "illegal characters.", "illegal"),
    ("1.5*16", [10, 5, 1, 8], -3, "illegal characters.", "illegal"),
    ("\u0663*8", [3, 8, 1, 1], -3, "illegal characters.", "illegal"),  # Arabic-Indic 3
    ("\uff18*3", [3, 8, 1, 1], -3, "illegal characters.", "illegal"),  # fullwidth 8
    ("10**2", [10, 5, 1, 8], -3 - 2 - 2,
     "invalid sequence after operator, you used invalid numbers: [2], "
     "you didn't use numbers: [5, 1, 8].", "grammar"),
    (None, [10, 5, 1, 8], -3, "illegal characters.", "missing"),
    ("", [10, 5, 1, 8], -2, "you didn't use numbers: [10, 5, 1, 8].", "numbers"),
    ("(10-5)1+8", [10, 5, 1, 8], -3, "invalid sequence after number.", "grammar"),
    ("10--5+1+8", [10, 5, 1, 8], -3, "invalid sequence after operator.", "grammar"),
    ("+10-5+1+8", [10, 5, 1, 8], -3, "invalid sequence after operator.", "grammar"),
    ("((10+5)(1+8)", [10, 5, 1, 8], -3, "invalid sequence before '('.", "grammar"),
    ("(10+5-)+1+8", [10, 5, 1, 8], -3, "invalid sequence after ')'.", "grammar"),
    ("10+5)+1+8", [10, 5, 1, 8], -3, "unmatched closing parenthesis.", "grammar"),
    ("10(5+1)+8", [10, 5, 1, 8], -6,
     "invalid sequence before '(', unmatched closing parenthesis.", "grammar"),
    ("10++5", [10, 5, 1, 8], -5,
     "invalid sequence after operator, you didn't use numbers: [1, 8].", "grammar"),
    ("10+5+1+8+7-7", [10, 5, 1, 8], -2, "you used invalid numbers: [7].", "numbers"),
    ("10+5+1+8-8", [10, 5, 1, 8], -2, "you used numbers: [8] too many times.", "numbers"),
    ("10+10+5+1+8+7", [10, 5, 1, 8], -2, "you used invalid numbers: [7].", "numbers"),
    ("10+10+5-1", [10, 5, 1, 8], -4,
     "you used numbers: [10] too many times, you didn't use numbers: [8].", "numbers"),
    ("10+5+1", [10, 5, 1, 8], -2, "you didn't use numbers: [8].", "numbers"),
    ("10*3-4-2", [2, 3, 4, 13], -4,
     "you used invalid numbers: [10], you didn't use numbers: [13].", "numbers"),
    ("8/(3-8/3", [3, 3, 8, 8], 1, "partial solution.", "partial"),
    ("(10-5-1", [10, 5, 1, 8], -2, "you didn't use numbers: [8].", "numbers"),
    ("10+5+1+8+", [10, 5, 1, 8], -1,
     "10+5+1+8 is partially correct but the full formula does not match any solution.",
     "wrong"),
    ("(10-5-1)*8", [10, 5, 1, 8], -1,  # = 32: SPEC's sample answer is not a solution
     "(10 is partially correct but the full formula does not match any solution.", "wrong"),
    ("3*8-3*8", [3, 3, 8, 8], -1, "your formula does not match any solution.", "wrong"),
    ("8/(3-3)+8", [3, 3, 8, 8], -1,
     "8/(3- is partially correct but the full formula does not match any solution.", "wrong"),
    ("07+5+1+8+3", [7, 5, 1, 8], -2, "you used invalid numbers: [3].", "numbers"),
    ("10+5+1+8", [10, 5, 1, 8], 5, "Correct solution.", "correct"),
    ("8/(3-8/3)", [3, 3, 8, 8], 5, "Correct solution.", "correct"),
    ("4/(1-5/6)", [4, 1, 5, 6], 5, "Correct solution.", "correct"),
    ("(((4/(1-5/6))))", [4, 1, 5, 6], 5, "Correct solution.", "correct"),
]


@pytest.mark.parametrize("formula,values,reward,reasons,kind", ROWS)
def test_reward_table(formula, values, reward, reasons, kind):
    verdict = P.grade_formula(formula, values)
    assert (verdict.reward, verdict.reasons, verdict.kind) == (reward, reasons, kind)
    assert verdict.solved == (reward == 5)
    assert naive_reward(formula, values) == (reward, reasons)


def test_exact_rationals_deviation_is_real():
    # the reference evaluates in floats: this exact solution misses 24 there
    assert 4 / (1 - 5 / 6) != 24
    assert P.grade_formula("4/(1-5/6)", [4, 1, 5, 6]).reward == 5


def test_leading_zero_counts_as_the_card_but_fails_to_evaluate():
    verdict = P.grade_formula("07+8+1*9", [7, 8, 1, 9])  # 7+8+9 = 24, but "07" is not Python
    assert verdict.reward == -1 and verdict.kind == "wrong"


def test_formula_length_bounds():
    ok = "+".join(["(1-1)"] * 10) + "+3*8"  # 53 tokens, numbers wrong but graded normally
    assert P.grade_formula(ok, [1, 1, 3, 8]).kind != "illegal"
    too_many = "1" + "+1" * 32  # 65 tokens
    assert P.grade_formula(too_many, [1, 1, 3, 8]) == P.Grade(
        -3.0, False, "formula too long.", too_many, "illegal")
    too_wide = "1" * 300
    assert P.grade_formula(too_wide, [1, 1, 3, 8]).reasons == "formula too long."


def test_grade_end_to_end_on_json_answers():
    cards = ["2", "3", "4", "K"]
    answer = '{"cards": ["2", "3", "4", "K"], "number": [2, 3, 4, 10], "formula": "10*3-4-2=24"}'
    assert P.grade(answer, cards, P.Rule.ID).reward == 5
    ood = P.grade(answer, cards, P.Rule.OOD)
    assert (ood.reward, ood.reasons) == (
        -4, "you used invalid numbers: [10], you didn't use numbers: [13].")
    assert P.grade("", cards, P.Rule.ID).kind == "missing"
    assert P.grade("no json here", cards, P.Rule.ID).reward == -3


# ----------------------------------------------------------------------------- exact evaluator
@st.composite
def _expressions(draw, depth=0):
    """Random well-formed formula text (numbers 0..20, + - * /, optional parentheses)."""
    if depth >= 4 or draw(st.booleans()):
        text = str(draw(st.integers(0, 20)))
    else:
        op = draw(st.sampled_from("+-*/"))
        text = draw(_expressions(depth + 1)) + op + draw(_expressions(depth + 1))
    return f"({text})" if draw(st.integers(0, 3)) == 0 else text


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_evaluate_matches_python_arithmetic_over_fractions(text):
    from rotax.tasks.points.formula import evaluate, tokenize

    try:
        expected = _fraction_eval(text)
    except ZeroDivisionError:
        expected = None
    assert evaluate(tokenize(text)) == expected


def test_evaluate_fails_where_python_would_raise_and_on_bounds():
    from rotax.tasks.points.formula import MAX_NESTING, evaluate, tokenize

    for text in ["", "(1+2", "1+", "07*1", "1/0", "3/(2-2)", "()", "1)", "(1)(2)", "*1"]:
        assert evaluate(tokenize(text)) is None, text
    assert evaluate(tokenize("00+24")) == 24  # "00" is valid Python, "07" is not
    assert evaluate(tokenize("(" * MAX_NESTING + "24" + ")" * MAX_NESTING)) == 24
    assert evaluate(tokenize("(" * (MAX_NESTING + 1) + "24" + ")" * (MAX_NESTING + 1))) is None
    assert evaluate(tokenize("1+" * 200 + "1")) is None  # more than MAX_TOKENS tokens
    assert evaluate(tokenize("9" * 17)) is None
