"""The GeneralPoints verifier never executes model text, never raises, and stays fast.

Properties over arbitrary text and near-miss formulas (hypothesis), hostile inputs with a time
bound, a run with ``eval``/``exec``/``compile`` booby-trapped, and a static scan of the source.
"""

from __future__ import annotations

import ast
import builtins
import itertools
import json
import pathlib
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotax.tasks import points as P
from rotax.tasks.points import solver as points_solver, verifier as points_verifier
from tests.tasks.points.test_points import naive_reward

TASKS_DIR = pathlib.Path(P.__file__).parent
CARDS = ("K", "5", "A", "8")
SOLVABLE = [m for m in itertools.combinations_with_replacement(range(1, 14), 4)
            if P.is_solvable(m)]
FORMULA_ALPHABET = "0123456789+-*/()"
TIME_LIMIT = 0.05  # seconds per graded input

HOSTILE = [
    "", " ", "=", "{}", "[]", "null", '"', "{\"formula\"", "x" * 100_000, "{" * 50_000,
    "[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000,
    '{"formula": "' + "(" * 30_000 + '"}', '{"formula": "' + "1" * 30_000 + '"}',
    '{"formula": "' + "1+" * 10_000 + '1"}', '{"formula": "' + "(" * 60 + "10+5+1+8" + ")" * 60
    + '"}', '{"formula": "9**9**9"}', '{"formula": "9**9**9**9**9**9"}',
    "__import__('os').system('echo pwned')", '{"formula": "__import__(\'os\')"}',
    '{"formula": "\u0663+\u0663"}', '{"formula": "\uff11\uff10+5+1+8"}',
    '{"formula": 1' + "0" * 20_000 + "}", ('{"a": "' + "x" * 1000) * 30,
    '"formula": "' * 2500, '"formula"' + " " * 30_000 + ":", "'" * 32_000, "\x00" * 1000,
    '{"formula": "10+5+1+8\\u0000"}', '{"formula": "1e3"}', '{"formula": "0x18"}',
    '{"formula": "24"}', '{"formula": "(((((((((((((((((((("}', '{"formula": ")))))"}',
    '{"formula": "10/0+5+1+8"}', '{"formula": "8*(5-5)/0"}', "\ud800".encode(
        "utf-8", "surrogatepass").decode("utf-8", "replace"),
]


def _check(verdict: P.Grade) -> None:
    assert isinstance(verdict, P.Grade)
    assert verdict.kind in P.KINDS
    assert verdict.solved == (verdict.reward == 5.0) == (verdict.kind == "correct")
    assert verdict.reward in (5.0, 1.0, -1.0) or verdict.reward <= -2.0
    assert verdict.reasons.endswith(".") and verdict.reasons != "."


def _timed_grade(response: str) -> P.Grade:
    """Grade ``response``; the fastest of up to 3 runs must beat TIME_LIMIT (the machine is
    shared, so one slow run alone proves nothing)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        verdict = P.grade(response, CARDS, P.Rule.ID)
        best = min(best, time.perf_counter() - start)
        if best < TIME_LIMIT:
            break
    assert best < TIME_LIMIT, (best, response[:80])
    _check(verdict)
    return verdict


@pytest.fixture(scope="module", autouse=True)
def warm_caches():
    P.grade('{"formula": "10+5+1+8"}', CARDS, P.Rule.ID)


@pytest.mark.parametrize("response", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_are_graded_fast(response):
    verdict = _timed_grade(response)
    assert verdict.reward < 5
    P.CompactRenderer().parse_answer(response)  # never raises either


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=3000))
def test_arbitrary_text_never_raises(text):
    _timed_grade(text)
    _timed_grade(json.dumps({"formula": text}))
    _timed_grade('{"cards": [], "formula": "' + text + '"}')
    P.CompactRenderer().parse_answer(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=FORMULA_ALPHABET + " =.x", max_size=80))
def test_formula_like_text_matches_the_naive_rules(formula):
    formula = formula.split("=")[0]
    verdict = P.grade_formula(formula, [10, 5, 1, 8])
    _check(verdict)
    if len(formula) <= points_verifier.MAX_FORMULA_CHARS and "**" not in formula:
        assert (verdict.reward, verdict.reasons) == naive_reward(formula, [10, 5, 1, 8])


@st.composite
def near_misses(draw):
    values = draw(st.sampled_from(SOLVABLE))
    known = P.solutions(values)
    text = list(draw(st.sampled_from(known)))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["delete", "insert", "replace", "swap", "truncate"]))
        position = draw(st.integers(0, max(len(text) - 1, 0)))
        char = draw(st.sampled_from(FORMULA_ALPHABET))
        if action == "delete" and text:
            del text[position]
        elif action == "insert":
            text.insert(position, char)
        elif action == "replace" and text:
            text[position] = char
        elif action == "swap" and len(text) > 1:
            j = min(position + 1, len(text) - 1)
            text[position], text[j] = text[j], text[position]
        elif action == "truncate":
            text = text[:position]
    return "".join(text), values


@settings(max_examples=400, deadline=None)
@given(near_misses())
def test_near_miss_formulas_match_the_naive_rules(case):
    formula, values = case
    verdict = P.grade_formula(formula, values)
    _check(verdict)
    if "**" not in formula:  # the naive oracle uses Python arithmetic; skip powers
        assert (verdict.reward, verdict.reasons) == naive_reward(formula, values)


def test_grading_never_calls_eval_exec_or_compile(monkeypatch):
    rng = random.Random(0)
    inputs = list(HOSTILE)
    for values in rng.sample(SOLVABLE, 40):
        for s in rng.sample(P.solutions(values), 2):
            inputs += [json.dumps({"formula": s + "=24"}), s[:-1], s + "+", s[1:]]
    points_solver._solutions_cached.cache_clear()
    points_solver._templates.cache_clear()

    def trap(*args, **kwargs):
        raise AssertionError("model text must never be executed")

    with monkeypatch.context() as patch:
        for name in ("eval", "exec", "compile"):
            patch.setattr(builtins, name, trap)
        with pytest.raises(AssertionError, match="never be executed"):
            eval("1")  # noqa: S307 -- the trap is armed
        for response in inputs:
            _check(P.grade(response, CARDS, P.Rule.ID))
            _check(P.grade_formula(P.extract_formula(response), [4, 1, 5, 6]))
        for values in rng.sample(SOLVABLE, 20):  # the solver runs under the trap too
            assert P.is_solvable(values)
            assert P.grade_formula(P.solutions(values)[0], values).solved
        episode = P.Episode.start(CARDS, P.Rule.ID, P.JsonChatRenderer())
        episode = episode.record('{"formula": "10+5+1+8"}')
        assert episode.solved


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "literal_eval", "sympify",
                   "parse_expr", "simplify", "execfile"}
FORBIDDEN_IMPORTS = {"ast", "sympy", "pickle", "marshal", "code", "codeop", "importlib"}


def test_source_contains_no_evaluation_of_text():
    files = sorted(TASKS_DIR.glob("*.py"))
    assert any(f.name == "verifier.py" for f in files)
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    assert func.id not in FORBIDDEN_CALLS, (path.name, node.lineno, func.id)
                elif isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_CALLS:
                    is_regex = func.attr == "compile" and isinstance(func.value, ast.Name) \
                        and func.value.id == "re"
                    assert is_regex, (path.name, node.lineno, func.attr)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in FORBIDDEN_IMPORTS, path.name
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in FORBIDDEN_IMPORTS, path.name
            elif isinstance(node, ast.Name):
                assert node.id not in ("eval", "exec", "__builtins__"), (path.name, node.id)
