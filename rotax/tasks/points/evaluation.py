"""GeneralPoints evaluation: revision episodes on seeded hand sets, summarized with intervals.

Metrics of one hand set (:func:`summarize`):

* ``within`` — share of hands solved within the attempts (the study's accuracy);
* ``first_attempt`` — share solved by the first answer;
* ``format_error`` — share of graded attempts whose formula was missing or had illegal
  characters (``Grade.kind`` in ``missing``, ``illegal``);
* ``kinds`` — share of graded attempts per outcome class (``Grade.kind``);
* ``mean_reward`` — mean verifier reward per graded attempt, with a normal-approximation 95%
  interval (mean ± z·sd/√n), since a reward is not a binary outcome.

Proportions carry 95% Wilson score intervals (:func:`wilson_interval`): at n = 234 one
standard error is about 2.3 points. :func:`evaluate` runs several seeds — seed ``s`` deals
``evaluation_hands(rule, seed=s, n)`` and samples with ``jax.random.key(s)`` — and reports
each seed, the mean over seeds, and the pooled proportion with its Wilson interval.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

import jax
import numpy as np

from rotax import sampling
from rotax.stats.intervals import wilson_interval
from rotax.tasks.points.episodes import EpisodeBatch, Generator, run_episodes
from rotax.tasks.points import KINDS, MAX_ATTEMPTS, Renderer, Rule, RuleLike, evaluation_hands

FORMAT_ERROR_KINDS = ("missing", "illegal")


@dataclasses.dataclass(frozen=True)
class Proportion:
    """``count`` of ``n`` with its estimate and 95% Wilson interval ``[low, high]``."""

    count: int
    n: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, count: int, n: int) -> "Proportion":
        low, high = wilson_interval(int(count), int(n))
        return cls(int(count), int(n), count / n if n else math.nan, low, high)


@dataclasses.dataclass(frozen=True)
class Mean:
    """Mean of ``n`` values with a normal-approximation 95% interval."""

    value: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Mean":
        values = np.asarray(values, np.float64)
        if values.size == 0:
            return cls(math.nan, 0, math.nan, math.nan)
        mean = float(values.mean())
        half = 1.959964 * float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else 0.0
        return cls(mean, int(values.size), mean - half, mean + half)


def summarize(batch: EpisodeBatch) -> dict:
    """Metrics of one finished :class:`EpisodeBatch` (see the module docstring): a dict of
    :class:`Proportion` / :class:`Mean` values plus ``kinds`` (a dict of Proportions),
    ``hands``, ``attempts`` (graded attempts in all) and ``mean_attempts``."""
    hands = len(batch.episodes)
    kinds = [t.kind for t in batch.turns]
    attempts = len(kinds)
    return {
        "hands": hands,
        "attempts": attempts,
        "within": Proportion.of(int(batch.solved.sum()), hands),
        "first_attempt": Proportion.of(int(batch.solved_first_attempt.sum()), hands),
        "mean_reward": Mean.of([t.reward for t in batch.turns]),
        "format_error": Proportion.of(sum(k in FORMAT_ERROR_KINDS for k in kinds), attempts),
        "truncated": Proportion.of(sum(t.truncated for t in batch.turns), attempts),
        "kinds": {kind: Proportion.of(kinds.count(kind), attempts) for kind in KINDS},
        "mean_attempts": attempts / hands if hands else math.nan,
    }


SCALAR_METRICS = ("within", "first_attempt", "mean_reward", "format_error", "truncated")


def _pool(summaries: list[dict]) -> dict:
    """Across seeds: per metric the mean over seeds, its spread, and the pooled interval."""
    pooled = {}
    for name in SCALAR_METRICS:
        values = [s[name].value for s in summaries]
        entry = {"mean": statistics.fmean(values),
                 "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        if isinstance(summaries[0][name], Proportion):
            entry["pooled"] = Proportion.of(sum(s[name].count for s in summaries),
                                            sum(s[name].n for s in summaries))
        pooled[name] = entry
    pooled["kinds"] = {kind: Proportion.of(sum(s["kinds"][kind].count for s in summaries),
                                           sum(s["kinds"][kind].n for s in summaries))
                       for kind in KINDS}
    return pooled


def evaluate(cfg, params, tokenizer, renderer: Renderer, rule: RuleLike, *,
             seeds: Sequence[int] = (42,), n: int = 234, attempts: int = MAX_ATTEMPTS,
             options: sampling.SamplingOptions = sampling.SamplingOptions(temperature=0.0),
             batch_size: int = 32, mesh=None, generator: Generator | None = None,
             progress: bool = True) -> dict:
    """Revision episodes on ``n`` seeded hands per seed. Returns ``{"per_seed": {seed:
    summary}, "over_seeds": pooled, "batches": {seed: EpisodeBatch}}`` (see :func:`summarize`)."""
    per_seed, batches = {}, {}
    for seed in seeds:
        hands = evaluation_hands(rule, seed=seed, n=n)
        batch = run_episodes(cfg, params, tokenizer, renderer, hands, rule, jax.random.key(seed),
                             attempts=attempts, options=options, batch_size=batch_size, mesh=mesh,
                             generator=generator, progress=progress, description=f"seed {seed}")
        per_seed[seed], batches[seed] = summarize(batch), batch
    return {"per_seed": per_seed, "over_seeds": _pool(list(per_seed.values())), "batches": batches}


def to_json(report: dict) -> dict:
    """``report`` without the episode batches, dataclasses as dicts (JSON-serializable)."""
    def convert(x):
        if dataclasses.is_dataclass(x):
            return dataclasses.asdict(x)
        if isinstance(x, dict):
            return {str(k): convert(v) for k, v in x.items()}
        return x
    return convert({k: v for k, v in report.items() if k != "batches"})


def _cell(x) -> str:
    if isinstance(x, Proportion):
        return f"{100 * x.value:5.1f} [{100 * x.low:4.1f}, {100 * x.high:4.1f}]"
    if isinstance(x, Mean):
        return f"{x.value:+.2f} [{x.low:+.2f}, {x.high:+.2f}]"
    return str(x)


def format_table(report: dict) -> str:
    """A plain-text table: one row per metric, one column per seed, then mean ± std over seeds
    and the pooled estimate. Proportions in %, with 95% intervals in brackets."""
    seeds = list(report["per_seed"])
    rows = [("metric", *[f"seed {s}" for s in seeds], "mean ± std", "pooled")]
    pooled = report["over_seeds"]
    for name in SCALAR_METRICS:
        scale = 1 if name == "mean_reward" else 100
        entry = pooled[name]
        rows.append((name, *[_cell(report["per_seed"][s][name]) for s in seeds],
                     f"{scale * entry['mean']:.2f} ± {scale * entry['std']:.2f}",
                     _cell(entry.get("pooled", ""))))
    for kind in KINDS:
        rows.append((f"kind:{kind}", *[_cell(report["per_seed"][s]["kinds"][kind]) for s in seeds],
                     "", _cell(pooled["kinds"][kind])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    note = "(proportions in %, 95% Wilson intervals; mean_reward with a normal 95% interval)"
    return note + "\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def training_eval_hook(section, model_cfg, tokenizer, renderer, mesh):
    """``hook(params, step) -> {id_accuracy, ood_accuracy, id_first_attempt,
    ood_first_attempt}`` from :func:`evaluate` (greedy, revision episodes) on the first
    ``section.eval_hands`` hands of each seeded set; ``section`` is the ``sft`` or ``ppo``
    config section."""

    def hook(params, step):
        out = {}
        for name, rule in (("id", Rule.ID), ("ood", Rule.OOD)):
            report = evaluate(model_cfg, params, tokenizer, renderer, rule,
                              seeds=tuple(section.eval_seeds), n=section.eval_hands,
                              batch_size=section.eval_batch_size, mesh=mesh, progress=False)
            pooled = report["over_seeds"]
            out[f"{name}_accuracy"] = pooled["within"]["mean"]
            out[f"{name}_first_attempt"] = pooled["first_attempt"]["mean"]
        return out

    return hook
