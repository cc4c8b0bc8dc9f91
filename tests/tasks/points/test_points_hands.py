"""GeneralPoints cards, rules and seeded hands (evaluation sets and the two controls)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import pytest

from rotax.tasks import points as P

# Pinned identities of the default evaluation sets. A change here changes every reported
# accuracy: update only on purpose, and say so in the changelog.
PINNED = {
    "ID": "3f41a518daddff1f5e8fb75cd1cfbe68432ff588dce073137935bb6d23488262",
    "OOD": "fa08227dc10a712386d9f930fee6b15d351defbb47508249963a2d06b21cad8d",
    "FACE_FREE": "b58d6f17f2b998714b0e3df1838eee6679de623f87c1b32081c77d02f3557753",
}

VALUE_OOD = {"A": 1, "J": 11, "Q": 12, "K": 13, **{str(n): n for n in range(2, 11)}}


def _solvable(values) -> bool:
    """Independent check: combine any two numbers until one is left (exact Fractions)."""
    def reach(nums):
        if len(nums) == 1:
            return nums[0] == 24
        for i, j in itertools.combinations(range(len(nums)), 2):
            a, b = nums[i], nums[j]
            rest = [nums[k] for k in range(len(nums)) if k not in (i, j)]
            options = [a + b, a - b, b - a, a * b] + ([a / b] if b else []) + (
                [b / a] if a else [])
            if any(reach(rest + [r]) for r in options):
                return True
        return False
    return reach([Fraction(v) for v in values])


def _fingerprint(hands) -> str:
    text = json.dumps([list(h) for h in hands], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_rules_and_card_values():
    assert P.card_values(["A", "7", "10", "K"], P.Rule.ID) == (1, 7, 10, 10)
    assert P.card_values(["A", "7", "10", "K"], P.Rule.OOD) == (1, 7, 10, 13)
    assert P.card_values(["J", "Q", "K"], P.FaceRule(5, 7, 12)) == (5, 7, 12)
    assert P.Rule(P.FaceRule(11, 12, 13)) is P.Rule.OOD
    assert P.as_face_rule(P.Rule.ID) == P.FaceRule(10, 10, 10)
    assert [P.rank_number(r) for r in P.STANDARD_RANKS] == list(range(1, 14))
    assert P.card_values(["11", "12", "13"], P.Rule.ID) == (11, 12, 13)  # extended deck
    for bad in ["1", "0", "14", "T", "10 ", "٣", "", "j"]:
        with pytest.raises(ValueError):
            P.card_values([bad], P.Rule.ID)
    for bad in [(0, 1, 1), (1, 1, 14), (1.0, 2, 3), (True, 2, 3)]:
        with pytest.raises(ValueError):
            P.FaceRule(*bad)
    with pytest.raises(TypeError):
        P.as_face_rule("ID")


@pytest.mark.parametrize("name", ["ID", "OOD"])
def test_evaluation_sets(name):
    rule = P.Rule[name]
    hands = P.evaluation_hands(rule)
    assert len(hands) == 234
    assert all(len(h) == 4 and set(h) <= set(P.STANDARD_RANKS) for h in hands)
    values = P.as_face_rule(rule).face_values
    face = dict(zip("JQK", values))
    for hand in hands:
        assert _solvable([face.get(c, VALUE_OOD[c]) for c in hand]), hand
    if rule is P.Rule.OOD:
        assert all(set(h) & set("JQK") for h in hands)
    # identical across calls, pinned, and not the same draws as the other set
    assert P.evaluation_hands(rule) == hands
    assert _fingerprint(hands) == P.hands_fingerprint(hands) == PINNED[name]
    other = P.evaluation_hands(P.Rule.OOD if rule is P.Rule.ID else P.Rule.ID)
    assert hands[:20] != other[:20]


def test_evaluation_sets_are_identical_in_a_fresh_process():
    code = ("from rotax.tasks import points as P;"
            "print(P.hands_fingerprint(P.evaluation_hands(P.Rule.ID, seed=7, n=50)));"
            "print(P.hands_fingerprint(P.evaluation_hands(P.Rule.OOD, seed=7, n=50)))")
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == [
        P.hands_fingerprint(P.evaluation_hands(P.Rule.ID, seed=7, n=50)),
        P.hands_fingerprint(P.evaluation_hands(P.Rule.OOD, seed=7, n=50))]


def test_seeds_and_sizes():
    assert P.evaluation_hands(P.Rule.ID, seed=1, n=30) != P.evaluation_hands(P.Rule.ID, n=30)
    assert P.evaluation_hands(P.Rule.ID, n=30) == P.evaluation_hands(P.Rule.ID)[:30]
    assert P.evaluation_hands(P.Rule.ID, n=0) == []


def test_deals_follow_their_distribution():
    rng = random.Random(0)
    uniform = P.deal_hands(rng, P.Rule.OOD, 600, P.Deal.UNIFORM)
    counts = Counter(c for h in uniform for c in h)
    assert set(counts) == set(P.STANDARD_RANKS)  # every rank shows up
    with_face = P.deal_hands(rng, P.Rule.OOD, 300, P.Deal.WITH_FACE)
    assert all(set(h) & set("JQK") for h in with_face)
    positions = Counter(i for h in with_face for i, c in enumerate(h) if c in "JQK")
    assert min(positions.values()) > 50  # shuffled: the face card is not always last
    free = P.deal_hands(rng, P.Rule.OOD, 300, P.Deal.FACE_FREE)
    assert not any(set(h) & set("JQK") for h in free)
    rule = P.FaceRule(2, 5, 13)
    for hand in P.deal_hands(rng, rule, 100):
        assert P.is_solvable(P.card_values(hand, rule))
    extended = P.STANDARD_RANKS + P.EXTENDED_NUMBER_RANKS
    hands = P.deal_hands(random.Random(1), P.Rule.ID, 400, ranks=extended)
    assert set(c for h in hands for c in h) & set(P.EXTENDED_NUMBER_RANKS)


def test_dealing_is_a_function_of_the_generator_state():
    a = P.deal_hands(random.Random("seed"), P.FaceRule(3, 4, 5), 40, P.Deal.WITH_FACE)
    b = P.deal_hands(random.Random("seed"), P.FaceRule(3, 4, 5), 40, P.Deal.WITH_FACE)
    assert a == b


def test_same_hands_new_rule_control():
    ood_hands = P.evaluation_hands(P.Rule.OOD)
    under_id = P.same_hands_new_rule(ood_hands, P.Rule.ID)
    assert 0 < len(under_id) <= len(ood_hands)
    assert all(P.is_solvable(P.card_values(h, P.Rule.ID)) for h in under_id)
    dropped = [h for h in ood_hands if h not in under_id]
    assert all(not _solvable(P.card_values(h, P.Rule.ID)) for h in dropped)
    assert under_id == [h for h in ood_hands if h in under_id]  # order kept


def test_face_free_control():
    hands = P.face_free_hands()
    assert len(hands) == 234 and P.hands_fingerprint(hands) == PINNED["FACE_FREE"]
    assert not any(set(h) & set("JQK") for h in hands)
    for rule in (P.Rule.ID, P.Rule.OOD, P.FaceRule(1, 2, 3)):
        assert P.same_hands_new_rule(hands, rule) == hands
        assert {P.card_values(h, rule) for h in hands} == {
            P.card_values(h, P.Rule.ID) for h in hands}
