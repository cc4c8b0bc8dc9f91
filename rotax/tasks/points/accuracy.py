"""Accuracy of a parameter tree on seeded GeneralPoints hand sets, for the study's stages.

Hands are dealt from the study's deck (the toy's 16 ranks, or the standard 13), so the toy and
real runs share this code. Results are plain dicts ``{"mean", "ci", "n", "first_attempt",
"mean_reward", "face_as_id", "outcomes"}`` ready for JSON and the report; ``outcomes`` is the
per-hand result (``"0101…"``, hand order) that paired comparisons of two models on the same
hands need.
"""

from __future__ import annotations

import random
from typing import Sequence

import jax

from rotax import sampling
from rotax.tasks.points.episodes import run_episodes
from rotax.stats.intervals import encode_outcomes
from rotax.tasks.points.evaluation import Proportion, summarize
from rotax.tasks.points import Deal, Rule, as_face_rule, deal_hands, default_deal


def study_hands(rule, seed: int, n: int, ranks: Sequence[str], deal: Deal | None = None) -> list:
    """``n`` solvable hands under ``rule`` from ``ranks``, a pure function of its arguments."""
    face = as_face_rule(rule)
    deal = default_deal(face) if deal is None else deal
    # the seed string predates the package layout: changing it would change every hand set
    rng = random.Random(f"rotax.study/{deal.value}/{face.jack}-{face.queen}-{face.king}/{seed}")
    return deal_hands(rng, face, n, deal, ranks)


def face_read_as_id(batch) -> Proportion:
    """Share of first attempts whose scratchpad values equal the hand's values under the ID rule
    where they differ from the active rule's values ("treats J as 10")."""
    hits = total = 0
    for turn, hand in ((t, batch.hands[t.hand_index]) for t in batch.turns if t.attempt == 0):
        id_values = sorted(as_face_rule(Rule.ID).values(hand))
        rule_values = sorted(as_face_rule(batch.rule).values(hand))
        if id_values == rule_values:
            continue
        total += 1
        words = turn.response_text.split(":")[0].split()
        hits += words == [str(v) for v in id_values]
    return Proportion.of(hits, total)


def evaluate_accuracy(cfg, params, tokenizer, renderer, hands, rule, *, attempts: int,
                      max_new_tokens: int, batch_size: int, seed: int = 0,
                      temperature: float = 0.0, progress: bool = False,
                      options: sampling.SamplingOptions | None = None) -> dict:
    """Revision episodes on ``hands``; returns within-``attempts`` accuracy with its 95% Wilson
    interval, first-attempt accuracy, mean reward and the face-read-as-ID share. ``options``
    (sampled decoding) replaces ``temperature`` and ``max_new_tokens``; the sampling key is
    ``seed``."""
    options = options or sampling.SamplingOptions(temperature=temperature, max_new_tokens=max_new_tokens)
    batch = run_episodes(cfg, params, tokenizer, renderer, hands, rule, jax.random.key(seed),
                         attempts=attempts, options=options, batch_size=batch_size, progress=progress)
    s = summarize(batch)
    face = face_read_as_id(batch)
    return {"mean": s["within"].value, "ci": [s["within"].low, s["within"].high], "n": s["within"].n,
            "first_attempt": s["first_attempt"].value, "mean_reward": s["mean_reward"].value,
            "face_as_id": face.value if face.n else None, "outcomes": encode_outcomes(batch.solved)}
