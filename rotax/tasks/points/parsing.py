"""Read the ``cards``, ``number`` and ``formula`` fields out of a model's JSON-like answer.

Order of attempts (reference behaviour, made more tolerant):

1. the whole response as JSON; then JSON objects embedded in text (the first few ``{``
   positions are tried with a JSON decoder). A field is looked up breadth-first, so a
   top-level key wins over one nested deeper.
2. otherwise a pattern: ``"formula": "..."`` (whitespace around ``:`` and single quotes are
   accepted; the value may not span lines).
3. otherwise the field is absent (``None``).

The formula is cut at its first ``=``. Only JSON decoding and regular expressions touch the
text; nothing is executed. Responses longer than :data:`MAX_RESPONSE_CHARS` are not read at
all (every field absent).

:func:`parse_reference_answer` is the study's own, stricter reading (``re_match`` of its
``utils_general.py``): the whole response as one JSON object with a string ``formula``, else
the first match of exactly ``"formula": "(.*?)"`` (one space after the colon, double quotes,
not across lines), else no formula.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import deque

#: Longest response that is parsed; longer ones count as having no formula.
MAX_RESPONSE_CHARS = 32_768
#: How many ``{`` positions are tried as the start of an embedded JSON object.
MAX_JSON_STARTS = 32
_MAX_JSON_NODES = 1_000

_FIELD_PATTERNS = {
    name: re.compile(r"""["']%s["']\s*:\s*(?:"([^"\n]*)"|'([^'\n]*)')""" % name)
    for name in ("formula",)
}
_LIST_PATTERNS = {
    name: re.compile(r"""["']%s["']\s*:\s*\[([^\]\n]*)\]""" % name)
    for name in ("cards", "number")
}


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    """Fields read from one response; ``None`` where absent.

    ``formula`` is already cut at its first ``=``; ``cards`` and ``number`` are lists as
    written (strings or ints), kept for analysis only (they are not graded in text mode).
    """

    formula: str | None
    cards: list | None = None
    number: list | None = None


def _json_documents(text: str):
    """Yield JSON values decoded from ``text``: the whole text, then objects inside it."""
    decoder = json.JSONDecoder()
    try:
        yield decoder.decode(text.strip())
        return
    except Exception:  # any decoding failure (ValueError, RecursionError, ...) means "no"
        pass
    start = text.find("{")
    tries = 0
    while start != -1 and tries < MAX_JSON_STARTS:
        tries += 1
        try:
            value, end = decoder.raw_decode(text, start)
        except Exception:
            start = text.find("{", start + 1)
            continue
        yield value
        start = text.find("{", end)


def _find_key(document, key: str):
    """Return the value of ``key`` in the first dict (breadth-first) holding it, else a sentinel."""
    queue = deque([document])
    visited = 0
    while queue and visited < _MAX_JSON_NODES:
        node = queue.popleft()
        visited += 1
        if isinstance(node, dict):
            if key in node:
                return node[key]
            queue.extend(node.values())
        elif isinstance(node, list):
            queue.extend(node)
    return _MISSING


_MISSING = object()


def _split_list(body: str) -> list:
    """Return the items of a list body such as ``'K', 5, "A"``: quoted items as strings,
    bare ASCII digit strings as ints, anything else as stripped strings."""
    items = []
    for raw in body.split(","):
        item = raw.strip()
        if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
            items.append(item[1:-1])
        elif item.isascii() and item.isdigit() and len(item) < 8:
            items.append(int(item))
        elif item:
            items.append(item)
    return items


def cut_at_equals(formula: str) -> str:
    """Return ``formula`` up to (not including) its first ``=``."""
    return formula.split("=", 1)[0]


def parse_answer(response: str) -> ParsedAnswer:
    """Return the :class:`ParsedAnswer` of a JSON-like ``response`` (see the module doc)."""
    if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
        return ParsedAnswer(formula=None)
    fields: dict = {}
    for document in _json_documents(response):
        for name in ("formula", "cards", "number"):
            if name not in fields:
                value = _find_key(document, name)
                if value is not _MISSING:
                    fields[name] = value
        if isinstance(fields.get("formula"), str):
            break
    formula = fields.get("formula")
    if not isinstance(formula, str):
        match = _FIELD_PATTERNS["formula"].search(response)
        formula = None if match is None else next(g for g in match.groups() if g is not None)
    lists = {}
    for name in ("cards", "number"):
        value = fields.get(name)
        if not isinstance(value, list):
            match = _LIST_PATTERNS[name].search(response)
            value = None if match is None else _split_list(match.group(1))
        lists[name] = value
    return ParsedAnswer(
        formula=None if formula is None else cut_at_equals(formula),
        cards=lists["cards"], number=lists["number"])


_REFERENCE_FORMULA = re.compile(r'"formula": "(.*?)"')
PARSERS = ("lenient", "reference")


def parse_reference_answer(response: str) -> ParsedAnswer:
    """The formula as the reference reads it (see the module doc), cut at its first ``=``.

    Where the reference would crash (a JSON ``formula`` that is not a string reaches its
    verifier's regular expressions) the formula counts as absent. ``cards``/``number`` are not
    read (the text-only study does not grade them)."""
    if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
        return ParsedAnswer(formula=None)
    formula = _MISSING
    try:
        document = json.loads(response)
        if isinstance(document, dict) and "formula" in document:
            formula = document["formula"]
    except Exception:  # json.loads failing (any error) sends the reference to the pattern
        pass
    if formula is _MISSING:
        match = _REFERENCE_FORMULA.search(response)
        formula = None if match is None else match.group(1)
    if not isinstance(formula, str):
        return ParsedAnswer(formula=None)
    return ParsedAnswer(formula=cut_at_equals(formula))


def extract_formula(response: str) -> str | None:
    """Return the formula of a JSON-like ``response`` cut at its first ``=``, or ``None``."""
    return parse_answer(response).formula
