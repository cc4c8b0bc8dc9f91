"""Per-item scores of a parameter tree on one half of a probe (higher is better for every
scorer, so the search and the decision never branch on the score kind).

* :class:`NllScorer` — answer likelihood: for each example the mean NLL (nats/token) of its
  reference answer tokens *and the EOS that ends them* (the SFT target, ``encode_answer``),
  given the prompt in the chat template; the item score is minus that. One forward pass per
  batch, no generation. The LM head runs only at answer positions (``sft.step.target_nll``).
* :class:`MatchScorer` — 1 when the greedy answer, decoded and stripped, equals the stripped
  reference answer, else 0.
* :class:`PointsScorer` — 1 when the GeneralPoints hand is solved within ``attempts`` greedy
  attempts (``tasks.points.accuracy.evaluate_accuracy``), else 0.

Lengths are checked when a scorer is built (before any model work): an example whose prompt +
answer (NLL) or prompt + ``max_new_tokens`` (match) exceeds the model's context
(``max_position_embeddings``) is a :class:`~rotax.gate.probes.ProbeError` naming its line.
With a ``mesh`` the batch rows are split over ``("data", "fsdp")`` and the parameters stay in
their shardings; only the per-row results come back to the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rotax import sampling
from rotax.gate.probes import Probe, ProbeError
from rotax.io.tokenizer import decode_response, encode_prompt, eos_ids, pad_id
from rotax.runtime.host import to_global, to_host
from rotax.runtime.sharding import batch_sharding
from rotax.sft.data import pack_examples, tokenizer_encoder
from rotax.sft.step import target_nll, target_positions
from rotax.stats.intervals import decode_outcomes
from rotax.tasks.points.accuracy import evaluate_accuracy
from rotax.tasks.points import CompactRenderer, JsonChatRenderer
from rotax.tasks.points.toy_tokenizer import is_toy_tokenizer


def _rows_per_call(batch_size: int, mesh) -> int:
    if mesh is None:
        return batch_size
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return -(-batch_size // shards) * shards


@functools.partial(jax.jit, static_argnames=("cfg",))
def _row_nll(params, tokens, mask, positions, weights, *, cfg):
    nll = target_nll(cfg, params, tokens, mask, positions)
    return jnp.sum(nll * weights, -1), jnp.sum(weights, -1)


class NllScorer:
    """``scorer(params) -> [n]`` float64: minus each example's mean answer-token NLL."""

    binary = False

    def __init__(self, cfg, tokenizer, examples, *, mesh=None, batch_size: int = 16,
                 bucket: int = 16):
        self.cfg, self.mesh = cfg, mesh
        encode = tokenizer_encoder(tokenizer)
        items = []
        for example in examples:
            prompt, answer = encode(list(example.messages), example.answer)
            if len(prompt) + len(answer) > cfg.max_position_embeddings:
                raise ProbeError(f"probe line {example.line}: prompt + answer = "
                                 f"{len(prompt)} + {len(answer)} tokens exceed the model's context "
                                 f"of {cfg.max_position_embeddings}")
            items.append((prompt, answer))
        rows = _rows_per_call(batch_size, mesh)
        self.batches = []
        for start in range(0, len(items), rows):
            chunk = items[start:start + rows]
            count = len(chunk)
            chunk = chunk + [chunk[0]] * (rows - count)
            batch = pack_examples(chunk, pad_id=pad_id(tokenizer, cfg), bucket=bucket,
                                  max_length=cfg.max_position_embeddings)
            positions, weights = target_positions(batch.loss_mask, bucket)
            self.batches.append(((batch.tokens, batch.attention_mask, positions, weights), count))
        self.size = len(items)

    def __call__(self, params) -> np.ndarray:
        out = []
        for arrays, count in self.batches:
            if self.mesh is not None:
                arrays = to_global(arrays, batch_sharding(self.mesh))
            sums, counts = to_host(_row_nll(params, *arrays, cfg=self.cfg))
            out.append(-(np.asarray(sums, np.float64) / np.asarray(counts, np.float64))[:count])
        return np.concatenate(out)


class MatchScorer:
    """``scorer(params) -> [n]`` float64 of 0/1: greedy answer == reference (stripped)."""

    binary = True

    def __init__(self, cfg, tokenizer, examples, *, mesh=None, batch_size: int = 16,
                 slack_tokens: int = 8):
        self.cfg, self.tokenizer, self.mesh, self.batch_size = cfg, tokenizer, mesh, batch_size
        self.prompts = [encode_prompt(tokenizer, list(e.messages)) for e in examples]
        self.answers = [e.answer.strip() for e in examples]
        longest = max(len(tokenizer.encode(e.answer, add_special_tokens=False)) for e in examples)
        self.max_new_tokens = longest + 1 + slack_tokens
        for example, prompt in zip(examples, self.prompts):
            if len(prompt) + self.max_new_tokens > cfg.max_position_embeddings:
                raise ProbeError(f"probe line {example.line}: prompt of {len(prompt)} tokens + "
                                 f"{self.max_new_tokens} new tokens exceed the model's context of "
                                 f"{cfg.max_position_embeddings}")
        self.size = len(self.prompts)

    def __call__(self, params) -> np.ndarray:
        options = sampling.SamplingOptions(temperature=0.0, max_new_tokens=self.max_new_tokens)
        stop = eos_ids(self.tokenizer, self.cfg)
        out = sampling.generate(self.cfg, params, self.prompts, jax.random.key(0), options,
                                eos_ids=stop, pad_id=pad_id(self.tokenizer, self.cfg),
                                batch_size=self.batch_size, mesh=self.mesh)
        texts = [decode_response(self.tokenizer, g.tokens, stop).strip() for g in out]
        return np.asarray([t == a for t, a in zip(texts, self.answers)], np.float64)


class PointsScorer:
    """``scorer(params) -> [n]`` float64 of 0/1: GeneralPoints hands solved."""

    binary = True

    def __init__(self, cfg, tokenizer, hands, rule, *, renderer=None, attempts: int = 1,
                 max_new_tokens: int | None = None, batch_size: int = 64):
        toy = is_toy_tokenizer(tokenizer)
        self.renderer = renderer or (CompactRenderer() if toy else JsonChatRenderer())
        self.max_new_tokens = max_new_tokens or (40 if toy else 256)
        self.cfg, self.tokenizer, self.hands, self.rule = cfg, tokenizer, list(hands), rule
        self.attempts, self.batch_size, self.size = attempts, batch_size, len(self.hands)

    def __call__(self, params) -> np.ndarray:
        result = evaluate_accuracy(self.cfg, params, self.tokenizer, self.renderer, self.hands,
                                   self.rule, attempts=self.attempts,
                                   max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return decode_outcomes(result["outcomes"]).astype(np.float64)


def make_scorers(probe: Probe, cfg, tokenizer, *, mesh=None, batch_size: int = 16,
                 points_options: dict | None = None):
    """``(selection_scorer, report_scorer)`` for ``probe``. Raises ProbeError for an example
    that does not fit the model's context."""
    if probe.kind == "points":
        options = dict(points_options or {})
        return tuple(PointsScorer(cfg, tokenizer, half, probe.rule, **options)
                     for half in (probe.selection, probe.report))
    cls = NllScorer if probe.score == "nll" else MatchScorer
    return tuple(cls(cfg, tokenizer, half, mesh=mesh, batch_size=batch_size)
                 for half in (probe.selection, probe.report))
