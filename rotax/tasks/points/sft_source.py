"""GeneralPoints SFT data: solver-made examples as a batch source (:mod:`rotax.sft.data`'s
``(seed, step) -> Batch`` contract) and the factory that reads the ``data`` config section.

:class:`GeneralPointsSource` draws fresh examples with one ``random.Random`` per (seed, step,
row): a hand, a face-card rule (fixed, or drawn by a ``rule_sampler`` — the toy base is
pre-trained on many rules), a solution, rendered and tokenized.
"""

from __future__ import annotations

import random
from typing import Callable

from rotax.io.tokenizer import pad_id as tokenizer_pad_id
from rotax.sft.data import Batch, Example, JsonlChatSource, pack_examples, tokenizer_encoder
from rotax.tasks.points import (STANDARD_RANKS, CompactRenderer, FaceRule, JsonChatRenderer, Rule,
                                deal_hand, default_deal, sft_example)


def parse_rule(text: str):
    """``"id"`` / ``"ood"`` / ``"J,Q,K"`` (e.g. ``"10,10,10"``) -> a ``FaceRule``."""
    low = text.strip().lower()
    if low in ("id", "ood"):
        return Rule[low.upper()].value
    try:
        jack, queen, king = (int(x) for x in low.split(","))
    except ValueError:
        raise ValueError(f"face-card rule {text!r}: use 'id', 'ood' or three values 'J,Q,K'") from None
    return FaceRule(jack, queen, king)


class GeneralPointsSource:
    """``(seed, step) -> Batch`` of GeneralPoints SFT examples.

    ``encode(prompt, answer) -> (prompt_ids, answer_ids)`` tokenizes one rendered example
    (:func:`tokenizer_encoder` builds it from a tokenizer). Each rule of ``rules`` is drawn
    uniformly per example unless ``rule_sampler(rng) -> FaceRule`` is given. ``deal``
    defaults to the study's deal for the drawn rule (every OOD hand holds a face card).
    """

    def __init__(self, encode: Callable, *, batch_size: int, pad_id: int, renderer=None,
                 rules=("id",), rule_sampler: Callable | None = None, deal=None, ranks=None,
                 solution_choice: str = "random", bucket: int = 64, max_length: int = 1024,
                 stream: str = "sft"):
        self.encode, self.batch_size, self.pad_id = encode, batch_size, pad_id
        self.renderer = renderer or JsonChatRenderer()
        self.rules = [parse_rule(r) if isinstance(r, str) else r for r in rules]
        self.rule_sampler, self.deal = rule_sampler, deal
        self.ranks = tuple(ranks or STANDARD_RANKS)
        self.solution_choice, self.bucket, self.max_length = solution_choice, bucket, max_length
        self.stream = stream

    def example(self, seed: int, step: int, row: int) -> Example:
        """The tokenized example in ``row`` of batch ``step``."""
        rng = random.Random(f"rotax/{self.stream}/{seed}/{step}/{row}")
        rule = self.rule_sampler(rng) if self.rule_sampler else self.rules[rng.randrange(len(self.rules))]
        deal = self.deal if self.deal is not None else default_deal(rule)
        hand = deal_hand(rng, rule, deal, self.ranks)
        prompt, answer = sft_example(hand, rule, self.renderer, rng, self.solution_choice)
        prompt_ids, answer_ids = self.encode(prompt, answer)
        if len(prompt_ids) + len(answer_ids) > self.max_length:
            raise ValueError(f"GeneralPoints example of {len(prompt_ids) + len(answer_ids)} tokens "
                             f"exceeds data.max_length={self.max_length}")
        return prompt_ids, answer_ids

    def __call__(self, seed: int, step: int) -> Batch:
        rows = [self.example(seed, step, row) for row in range(self.batch_size)]
        return pack_examples(rows, pad_id=self.pad_id, bucket=self.bucket, max_length=self.max_length)


def make_renderer(data):
    """The task renderer named by ``data.renderer`` (``json_chat`` or ``compact``), grading with
    ``data.answer_parser`` (json_chat only)."""
    parser = getattr(data, "answer_parser", "lenient")
    if data.renderer == "json_chat":
        return JsonChatRenderer.from_template_file(data.template_file, parser) if data.template_file \
            else JsonChatRenderer(parser=parser)
    if parser != "lenient":
        raise ValueError(f"data.answer_parser {parser!r} applies to data.renderer=json_chat only")
    if data.renderer == "compact":
        return CompactRenderer()
    raise ValueError(f"data.renderer {data.renderer!r}: choose json_chat or compact")


def make_source(data, tok, *, batch_size: int, rules=None, stream: str = "sft"):
    """The batch source ``data`` (the config section) names, tokenizing with ``tok``.
    ``rules`` overrides ``data.rules`` (the probe sets use the ID and OOD rules)."""
    encode = tokenizer_encoder(tok)
    common = dict(batch_size=batch_size, pad_id=tokenizer_pad_id(tok), bucket=data.bucket,
                  max_length=data.max_length)
    if data.source == "general_points":
        return GeneralPointsSource(encode, renderer=make_renderer(data),
                                   rules=tuple(rules or data.rules),
                                   solution_choice=data.solution_choice, stream=stream, **common)
    if data.source == "jsonl":
        if not data.jsonl_path:
            raise ValueError("data.source=jsonl needs data.jsonl_path")
        return JsonlChatSource(data.jsonl_path, encode, **common)
    raise ValueError(f"data.source {data.source!r}: choose general_points or jsonl")


def probe_sets(data, tokenizer, batch_size: int) -> dict:
    """Held-out ID and OOD GeneralPoints batches (``data.probe_batches`` each) for probe losses."""
    if data.source != "general_points" or not data.probe_batches:
        return {}
    sets = {}
    for name in ("id", "ood"):
        source = make_source(data, tokenizer, batch_size=batch_size, rules=(name,), stream="probe")
        sets[name] = [source(data.probe_seed, i) for i in range(data.probe_batches)]
    return sets
