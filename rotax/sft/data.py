"""SFT data: (prompt ids, answer ids) examples packed into right-padded, length-bucketed batches.

A *batch source* is any callable ``source(seed, step) -> Batch`` (or an object with that
``__call__``) returning the same batch for the same arguments, so data order is a pure function
of ``(seed, step)`` and a resumed run sees exactly the batches it would have seen. Here:
:class:`JsonlChatSource` — a user's JSONL of ``{"messages": [...]}``: the prompt is every
message before the last assistant turn, the target that turn; epochs are seeded permutations.
The GeneralPoints source and the ``data`` section's factory live with the task
(:mod:`rotax.tasks.points.sft_source`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import ml_collections
import numpy as np

from rotax.io.tokenizer import encode_answer, encode_prompt

log = logging.getLogger(__name__)

Example = tuple  # (prompt_ids: list[int], answer_ids: list[int])


class Batch(NamedTuple):
    """One SFT batch, right-padded to a bucketed length ``S``.

    tokens: int32 ``[B, S]`` — prompt then answer ids, then ``pad_id``.
    loss_mask: float32 ``[B, S]`` — 1.0 where the token is an answer token (a prediction
    target of the previous position), else 0.
    attention_mask: bool ``[B, S]`` — real (non-padding) tokens.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    attention_mask: np.ndarray


def default_config() -> ml_collections.ConfigDict:
    """The ``data`` section.

    source: ``general_points`` or ``jsonl``. rules: face-card rules of the training hands,
    each ``id``, ``ood`` or ``J,Q,K`` values (``"10,10,10"``); several are drawn uniformly.
    renderer: ``json_chat`` (the study's prompt; ``template_file`` may replace its wording) or
    ``compact`` (the toy's word-level form). answer_parser (json_chat): ``lenient`` (rotax's
    parser) or ``reference`` (the study's strict ``"formula": "..."`` reading). solution_choice: ``random`` (uniform over known
    solutions) or ``canonical``. jsonl_path: the file for ``source=jsonl``. bucket: pad lengths
    up to a multiple of this; max_length: longer examples are cut (GeneralPoints: an error).
    probe_batches: batches in each ID/OOD probe set (loss on held-out hands); probe_seed: their
    seed (hands differ from training hands' seeds).
    """
    return ml_collections.ConfigDict({
        "source": "general_points",
        "rules": ("id",),
        "renderer": "json_chat",
        "template_file": "",
        "answer_parser": "lenient",
        "solution_choice": "random",
        "jsonl_path": "",
        "bucket": 64,
        "max_length": 1024,
        "probe_batches": 2,
        "probe_seed": 12345,
    })


def pack_examples(examples: Sequence[Example], *, pad_id: int, bucket: int = 64,
                  max_length: int = 1024) -> Batch:
    """Right-pads ``examples`` to ``S = min(max_length, ceil(longest / bucket) * bucket)``.

    Examples longer than ``max_length`` lose their tail (answer tokens first)."""
    longest = max(len(p) + len(a) for p, a in examples)
    length = min(max_length, -(-longest // bucket) * bucket)
    tokens = np.full((len(examples), length), pad_id, np.int32)
    loss_mask = np.zeros((len(examples), length), np.float32)
    attention = np.zeros((len(examples), length), bool)
    for row, (prompt, answer) in enumerate(examples):
        ids = (list(prompt) + list(answer))[:length]
        tokens[row, :len(ids)] = ids
        attention[row, :len(ids)] = True
        loss_mask[row, len(prompt):len(ids)] = 1.0
    return Batch(tokens, loss_mask, attention)


def chat_example(messages: Sequence[dict]) -> tuple[list[dict], str]:
    """``(prompt messages, target text)``: all turns before the last assistant turn, and it."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        raise ValueError("no assistant turn")
    return [dict(m) for m in messages[:last]], str(messages[last]["content"])


class JsonlChatSource:
    """``(seed, step) -> Batch`` over a JSONL file of ``{"messages": [{"role", "content"}, ...]}``.

    Every line is tokenized once at construction; lines without an assistant turn or longer
    than ``max_length`` are skipped with a warning. Global example ``k = step * B + row`` is
    ``permutation(seed, epoch)[k mod N]`` with ``epoch = k // N``.
    """

    def __init__(self, path, encode: Callable, *, batch_size: int, pad_id: int,
                 bucket: int = 64, max_length: int = 1024):
        self.path, self.batch_size, self.pad_id = Path(path), batch_size, pad_id
        self.bucket, self.max_length = bucket, max_length
        self.examples: list[Example] = []
        skipped = []
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    messages = json.loads(line)["messages"]
                    prompt, target = chat_example(messages)
                except (ValueError, KeyError, TypeError) as err:
                    skipped.append((number, str(err)))
                    continue
                prompt_ids, answer_ids = encode(prompt, target)
                if len(prompt_ids) + len(answer_ids) > max_length:
                    skipped.append((number, f"{len(prompt_ids) + len(answer_ids)} tokens > max_length"))
                    continue
                self.examples.append((prompt_ids, answer_ids))
        if skipped:
            log.warning("%s: skipped %d lines, e.g. line %d: %s", self.path, len(skipped), *skipped[0])
        if not self.examples:
            raise ValueError(f"{self.path}: no usable {{\"messages\": [...]}} lines")
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._permutations:
            self._permutations = {key: np.random.default_rng([seed, epoch]).permutation(len(self.examples))}
        return self._permutations[key]

    def __call__(self, seed: int, step: int) -> Batch:
        n = len(self.examples)
        rows = []
        for row in range(self.batch_size):
            k = step * self.batch_size + row
            rows.append(self.examples[int(self._permutation(seed, k // n)[k % n])])
        return pack_examples(rows, pad_id=self.pad_id, bucket=self.bucket, max_length=self.max_length)


def tokenizer_encoder(tok) -> Callable:
    """``encode(prompt, answer) -> (prompt_ids, answer_ids)`` with rotax.io.tokenizer's
    conventions: the prompt in the chat template with the generation prompt, the answer + EOS."""
    return lambda prompt, answer: (encode_prompt(tok, prompt), encode_answer(tok, answer))
