"""Probes of the gate: a JSONL file of chat examples, or a built-in GeneralPoints hand set.

A JSONL probe holds one example per line, ``{"messages": [{"role", "content"}, ...],
"answer": "..."}``: ``messages`` is the dialogue up to the answer (the prompt, rendered with the
model's chat template and its generation prompt) and ``answer`` the reference answer text.
Blank lines are skipped; anything else that is not such an object is an error naming the line.

The examples are split by a fixed seed into a *selection* half (the search scores candidates on
it) and a *report* half (the decision's numbers come only from it). A built-in probe
``general-points:ood`` / ``general-points:id`` is two disjoint seeded hand sets of ``hands``
hands each (selection, report), dealt under the OOD or ID rule from the deck the tokenizer
implies (the toy deck for rotax's toy tokenizer, else the standard 13 ranks).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rotax.tasks.points import STANDARD_RANKS, Rule
from rotax.tasks.points.accuracy import study_hands
from rotax.tasks.points.toy import TOY_RANKS

BUILT_IN = {"general-points:ood": Rule.OOD, "general-points:id": Rule.ID}
SCORES = ("nll", "match")
#: Seeds of the built-in probe's hand sets (selection, report); the study uses 1000+.
POINTS_SEEDS = (7001, 7002)


class ProbeError(ValueError):
    """A probe that cannot be used; the message names the file and line or the example."""


@dataclasses.dataclass(frozen=True)
class ChatExample:
    """One JSONL probe line: prompt ``messages``, reference ``answer``, its 1-based ``line``."""

    messages: tuple[dict, ...]
    answer: str
    line: int


@dataclasses.dataclass(frozen=True)
class Probe:
    """A probe split into halves. ``kind``: ``"chat"`` (items are :class:`ChatExample`) or
    ``"points"`` (items are hands, scored by GeneralPoints accuracy under ``rule``);
    ``score``: ``"nll"``, ``"match"`` or ``"accuracy"``; ``higher_is_better`` of the reported
    score (NLL is reported as is, lower better; every scorer returns per-item values where
    higher is better internally)."""

    name: str
    kind: str
    score: str
    selection: tuple
    report: tuple
    rule: Any = None
    ranks: tuple[str, ...] = ()

    @property
    def higher_is_better(self) -> bool:
        return self.score != "nll"


def read_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """Every example of a JSONL probe file. Raises :class:`ProbeError` naming the line of the
    first malformed one, or the file when it holds no example; FileNotFoundError if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe {path}: no such file")
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                examples.append(_parse_line(line, path, number))
    if not examples:
        raise ProbeError(f"probe {path}: no example (the file is empty); expected one JSON object "
                         '{"messages": [...], "answer": "..."} per line')
    return examples


def _parse_line(line: str, path: Path, number: int) -> ChatExample:
    where = f"probe {path}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ProbeError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise ProbeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    messages, answer = record.get("messages"), record.get("answer")
    if not isinstance(messages, list) or not messages:
        raise ProbeError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ProbeError(f"{where}: messages[{i}] is not a {{\"role\": str, \"content\": str}} "
                             "object")
    if not isinstance(answer, str) or not answer.strip():
        raise ProbeError(f"{where}: 'answer' must be a non-empty string")
    return ChatExample(tuple(dict(m) for m in messages), answer, number)


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(selection, report)`` item indices: a seeded permutation of ``range(n)`` cut in two
    (selection gets ``n // 2``), each half sorted."""
    if n < 2:
        raise ProbeError(f"a probe needs at least 2 examples (one per half), got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n // 2]), np.sort(order[n // 2:])


def is_built_in(spec: str) -> bool:
    return spec in BUILT_IN


def load_probe(spec: str, *, score: str = "nll", seed: int = 0, hands: int = 256,
               toy_deck: bool = False) -> Probe:
    """The probe ``spec`` names: a built-in name or a JSONL path. ``score`` applies to JSONL
    probes (``nll`` or ``match``); ``hands`` per half and ``toy_deck`` to built-in ones."""
    if spec in BUILT_IN:
        rule, ranks = BUILT_IN[spec], (TOY_RANKS if toy_deck else STANDARD_RANKS)
        halves = tuple(tuple(study_hands(rule, s, hands, ranks)) for s in POINTS_SEEDS)
        return Probe(spec, "points", "accuracy", *halves, rule=rule, ranks=tuple(ranks))
    if spec.startswith("general-points"):
        raise ProbeError(f"unknown built-in probe {spec!r}; built in: {', '.join(BUILT_IN)}")
    if score not in SCORES:
        raise ProbeError(f"--score {score!r}: choose {' or '.join(SCORES)}")
    examples = read_chat_jsonl(spec)
    selection, report = split_halves(len(examples), seed)
    return Probe(str(spec), "chat", score, tuple(examples[i] for i in selection),
                 tuple(examples[i] for i in report))


def points_probe(name: str, rule, selection: Sequence, report: Sequence, ranks) -> Probe:
    """A GeneralPoints probe from given hand sets (the study passes its own probe hands)."""
    return Probe(name, "points", "accuracy", tuple(selection), tuple(report), rule=rule,
                 ranks=tuple(ranks))
