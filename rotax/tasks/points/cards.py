"""Cards, face-card rules and seeded hands of the GeneralPoints (24-point) game.

A card is a rank string: ``'A'``, ``'2'`` .. ``'10'``, ``'J'``, ``'Q'``, ``'K'`` (suits play no
role). A hand is a tuple of four cards. A :class:`FaceRule` gives the values of J, Q and K;
``A`` is 1 and number cards count their number. :class:`Rule` names the study's two rules:
``Rule.ID`` (J, Q, K count as 10) and ``Rule.OOD`` (11, 12, 13). Functions taking a ``rule``
accept either.

The toy study's extended deck may also hold number cards ``'11'``, ``'12'``, ``'13'``
(valued 11-13 under every rule); pass such ranks through ``ranks=``.

Hands are dealt from an explicit ``random.Random`` so they are a pure function of the seed
(Python's Mersenne Twister and its string seeding are stable across platforms and versions).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import random
from typing import Iterable, Sequence, Union

from rotax.tasks.points.solver import is_solvable

FACE_CARDS = ("J", "Q", "K")
#: The 13 ranks A, 2..10, J, Q, K (rank numbers 1..13).
STANDARD_RANKS = ("A",) + tuple(str(n) for n in range(2, 11)) + FACE_CARDS
#: Number cards valued 11..13 that only the toy study's extended deck uses.
EXTENDED_NUMBER_RANKS = ("11", "12", "13")

Hand = tuple  # tuple[str, str, str, str]


@dataclasses.dataclass(frozen=True)
class FaceRule:
    """Values of the face cards J, Q, K (each an int in 1..13)."""

    jack: int
    queen: int
    king: int

    def __post_init__(self):
        for name in ("jack", "queen", "king"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 13:
                raise ValueError(f"FaceRule.{name} must be an int in 1..13, got {value!r}")

    @property
    def face_values(self) -> tuple[int, int, int]:
        """Return ``(jack, queen, king)``."""
        return (self.jack, self.queen, self.king)

    def value(self, card: str) -> int:
        """Return the value of one card under this rule; ``ValueError`` for an unknown card."""
        if card in FACE_CARDS:
            return self.face_values[FACE_CARDS.index(card)]
        if card == "A":
            return 1
        if isinstance(card, str) and card.isascii() and card.isdigit() and card[0] != "0":
            number = int(card)
            if 2 <= number <= 13:
                return number
        raise ValueError(f"unknown card {card!r}; expected one of {STANDARD_RANKS}")

    def values(self, hand: Sequence[str]) -> tuple[int, ...]:
        """Return the values of the cards of ``hand``, in hand order."""
        return tuple(self.value(card) for card in hand)


class Rule(enum.Enum):
    """The study's two face-card rules; each member's ``value`` is a :class:`FaceRule`."""

    ID = FaceRule(10, 10, 10)
    OOD = FaceRule(11, 12, 13)

    @property
    def face_rule(self) -> FaceRule:
        """Return this rule as a :class:`FaceRule`."""
        return self.value


RuleLike = Union[Rule, FaceRule]


def as_face_rule(rule: RuleLike) -> FaceRule:
    """Return ``rule`` as a :class:`FaceRule` (``Rule`` members are unwrapped)."""
    if isinstance(rule, Rule):
        return rule.value
    if isinstance(rule, FaceRule):
        return rule
    raise TypeError(f"expected a Rule or FaceRule, got {rule!r}")


def card_values(hand: Sequence[str], rule: RuleLike) -> tuple[int, ...]:
    """Return the values of ``hand``'s cards under ``rule``, in hand order."""
    return as_face_rule(rule).values(hand)


def rank_number(card: str) -> int:
    """Return a card's rank number: A=1, number cards their number, J=11, Q=12, K=13."""
    return Rule.OOD.value.value(card)


class Deal(enum.Enum):
    """How the four ranks of a hand are drawn (before the solvability check)."""

    #: Each rank uniform over the deck (the ID hands).
    UNIFORM = "uniform"
    #: Three uniform ranks plus one of J, Q, K, shuffled (the OOD hands: always a face card).
    WITH_FACE = "with_face"
    #: Ranks uniform over the non-face ranks (the "face-free hands" control).
    FACE_FREE = "face_free"


def deal_hand(rng: random.Random, rule: RuleLike, deal: Deal = Deal.UNIFORM,
              ranks: Sequence[str] = STANDARD_RANKS, max_tries: int = 100_000) -> Hand:
    """Return one hand of 4 cards that is solvable under ``rule``, drawn as ``deal`` says.

    Draws are repeated until the hand's values can make 24; ``RuntimeError`` after
    ``max_tries`` draws (a rule under which almost nothing is solvable).
    """
    face_rule = as_face_rule(rule)
    deal = Deal(deal)
    plain = [r for r in ranks if r not in FACE_CARDS]
    for _ in range(max_tries):
        if deal is Deal.UNIFORM:
            hand = [ranks[rng.randrange(len(ranks))] for _ in range(4)]
        elif deal is Deal.WITH_FACE:
            hand = [ranks[rng.randrange(len(ranks))] for _ in range(3)]
            hand.append(FACE_CARDS[rng.randrange(3)])
            rng.shuffle(hand)
        else:
            hand = [plain[rng.randrange(len(plain))] for _ in range(4)]
        if is_solvable(face_rule.values(hand)):
            return tuple(hand)
    raise RuntimeError(f"no solvable hand in {max_tries} draws under {face_rule}")


def deal_hands(rng: random.Random, rule: RuleLike, n: int, deal: Deal = Deal.UNIFORM,
               ranks: Sequence[str] = STANDARD_RANKS) -> list[Hand]:
    """Return ``n`` hands from :func:`deal_hand`, drawn in sequence from ``rng``."""
    return [deal_hand(rng, rule, deal, ranks) for _ in range(n)]


def default_deal(rule: RuleLike) -> Deal:
    """Return the study's deal for ``rule``: ``WITH_FACE`` for ``Rule.OOD``, else ``UNIFORM``."""
    return Deal.WITH_FACE if as_face_rule(rule) == Rule.OOD.value else Deal.UNIFORM


def evaluation_hands(rule: RuleLike, seed: int = 42, n: int = 234,
                     deal: Deal | None = None) -> list[Hand]:
    """Return the seeded evaluation set: ``n`` hands solvable under ``rule``.

    ``deal`` defaults to :func:`default_deal` (the OOD set always holds a face card). The
    generator is seeded from ``(deal, rule values, seed)``, so the ID and OOD sets for one seed
    are independent draws, and each set is identical on every run and machine.
    """
    face_rule = as_face_rule(rule)
    deal = default_deal(face_rule) if deal is None else Deal(deal)
    key = f"rotax.general_points/{deal.value}/{face_rule.jack}-{face_rule.queen}-" \
          f"{face_rule.king}/{int(seed)}"
    return deal_hands(random.Random(key), face_rule, n, deal)


def face_free_hands(seed: int = 42, n: int = 234) -> list[Hand]:
    """Return the "face-free hands" control: ``n`` seeded solvable hands without J, Q, K.

    Their values, and so their grading, are the same under every rule.
    """
    return evaluation_hands(Rule.ID, seed, n, deal=Deal.FACE_FREE)


def same_hands_new_rule(hands: Iterable[Hand], rule: RuleLike) -> list[Hand]:
    """Return the "same hands, new rule" control: the ``hands`` that are solvable under ``rule``.

    Prompt and grade the result under ``rule``; hands that cannot make 24 under it are
    dropped, since no answer to them could be correct.
    """
    face_rule = as_face_rule(rule)
    return [tuple(hand) for hand in hands if is_solvable(face_rule.values(hand))]


def hands_fingerprint(hands: Iterable[Hand]) -> str:
    """Return the sha256 hex digest of the hands' canonical JSON (``[["A","7","10","K"],...]``,
    no spaces) — a short identity for run metadata and reproducibility checks."""
    canonical = json.dumps([list(hand) for hand in hands], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
