"""Candidate repairs and their search under a time budget.

A :class:`Candidate` is one restoration operator of ``rotax.analysis.resets`` with its
parameters; ``base`` is always the reference, ``tuned`` the target. Operators:

* ``layer-reset`` — whole HF layers (every tensor incl. norms) from the base;
* ``uv-merge`` — base singular directions (top ``k_top`` / bottom ``k_tail``), tuned Σ;
* ``module-reset`` — every matrix of the given module types on the given layers from the base
  (``uv_merge`` with ``k_top = 1.0``, which is the base tensor exactly);
* ``swap`` (triplet swap) and ``sigma`` (Σ-only, a control) on request.

:func:`candidates` lists them in priority order — diagnosis-guided first (the moved layers and
modules), then the fixed "first 25%" layer reset, the UV-merge grid over all layers (top 10,
20, 50%, top+tail 20%), and the attribution rows (each module type alone over all layers, each
layer quarter alone). :func:`run_search` scores them on the probe's selection half in that
order until the budget is spent; :func:`choose` picks the winner.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import jax
import numpy as np

from rotax.analysis import resets
from rotax.analysis.selectors import LAYER_MODULES, Selector, parse_layers
from rotax.stats.intervals import recovered_share

OPERATORS = ("layer-reset", "uv-merge", "module-reset", "swap", "sigma")
DEFAULT_OPERATORS = ("layer-reset", "uv-merge", "module-reset")


class UnknownOperatorError(ValueError):
    """An operator name the gate does not know."""


def parse_operators(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Operator names from ``"layer-reset,uv-merge"`` or a list (None: the defaults). Raises
    :class:`UnknownOperatorError` naming the unknown one."""
    if spec is None:
        return DEFAULT_OPERATORS
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    for item in items:
        if item not in OPERATORS:
            raise UnknownOperatorError(f"unknown operator {item!r}; valid: {', '.join(OPERATORS)}")
    if not items:
        raise UnknownOperatorError("no operator given")
    return tuple(dict.fromkeys(items))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One repair: ``operator`` with ``layers`` (HF layer spec; None = all), ``modules``
    (None = the seven per-layer matrices), ranks ``k_top``/``k_tail`` (fractions), and the
    ``group`` that proposed it (``diagnosis``, ``fixed``, ``grid``, ``attribution``)."""

    name: str
    operator: str
    group: str
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    k_top: float = 0.0
    k_tail: float = 0.0

    def apply(self, tuned, base, cfg):
        """The repaired canonical tree (unselected tensors are the tuned ones, untouched)."""
        numbering = dict(layer_ids=cfg.layer_ids, num_hidden_layers=cfg.num_hidden_layers)
        if self.operator == "layer-reset":
            return resets.reset_layers(tuned, base, self.layers, **numbering)
        selector = Selector(layers=self.layers, modules=self.modules)
        if self.operator == "module-reset":
            return resets.uv_merge(tuned, base, selector, 1.0, **numbering)
        op = {"uv-merge": resets.uv_merge, "swap": resets.triplet_swap,
              "sigma": resets.sigma_only}[self.operator]
        return op(tuned, base, selector, self.k_top, self.k_tail, **numbering)

    def to_json(self) -> dict:
        return {"name": self.name, "operator": self.operator, "group": self.group,
                "layers": self.layers, "modules": list(self.modules) if self.modules else None,
                "k_top": self.k_top, "k_tail": self.k_tail}

    def key(self, total_layers: int) -> tuple:
        layers = parse_layers(self.layers, total_layers)
        top, tail = (1.0, 0.0) if self.operator == "module-reset" else (self.k_top, self.k_tail)
        return (self.operator, layers, self.modules, top, tail)


def quarters(total: int) -> list[str]:
    """HF layer ranges ``"a-b"`` of the four quarters of ``total`` layers (empty ones dropped)."""
    out = []
    for q in range(4):
        start, stop = round(total * q / 4), round(total * (q + 1) / 4)
        if stop > start:
            out.append(f"{start}-{stop - 1}")
    return list(dict.fromkeys(out))


def _spec(layers: Sequence[int]) -> str:
    return ",".join(str(i) for i in layers)


def candidates(cfg, diagnosis=None, operators: Sequence[str] = DEFAULT_OPERATORS, *,
               fixed_layers: Sequence[str] = ("first 25%",),
               ranks: Sequence[float] = (0.1, 0.2, 0.5)) -> list[Candidate]:
    """The candidate list in priority order (see the module docstring), without duplicates."""
    total = cfg.num_hidden_layers or cfg.num_layers
    has_head = not cfg.tie_word_embeddings
    out: list[Candidate] = []
    if diagnosis is not None and diagnosis.layers:
        spec = _spec(diagnosis.layers)
        moved = tuple(m for m in diagnosis.modules if m in LAYER_MODULES) or None
        out.append(Candidate(f"layer reset {spec} (diagnosis)", "layer-reset", "diagnosis", spec))
        top_layer = next((c["layer"] for c in diagnosis.cells if c["layer"] is not None), None)
        if top_layer is not None and len(diagnosis.layers) > 1:
            out.append(Candidate(f"layer reset {top_layer} (top layer)", "layer-reset", "diagnosis",
                                 str(top_layer)))
        out.append(Candidate(f"UV merge top 20% of layers {spec}", "uv-merge", "diagnosis", spec,
                             moved, 0.2))
        if moved:
            out.append(Candidate(f"reset {','.join(moved)} of layers {spec}", "module-reset",
                                 "diagnosis", spec, moved))
    for spec in fixed_layers:
        out.append(Candidate(f"layer reset {spec}", "layer-reset", "fixed", spec))
    for rank in ranks:
        out.append(Candidate(f"UV merge top {rank:.0%}", "uv-merge", "grid", None, None, rank))
    out.append(Candidate("UV merge top+tail 20%", "uv-merge", "grid", None, None, 0.2, 0.2))
    out.append(Candidate("triplet swap top 20%", "swap", "grid", None, None, 0.2))
    out.append(Candidate("Σ-only top 20% (control)", "sigma", "grid", None, None, 0.2))
    for module in LAYER_MODULES + ("embed",) + (("head",) if has_head else ()):
        out.append(Candidate(f"reset {module} only", "module-reset", "attribution", None, (module,)))
    for spec in quarters(total):
        out.append(Candidate(f"layer reset {spec} (quarter)", "layer-reset", "attribution", spec))
    seen, unique = set(), []
    for candidate in out:
        key = candidate.key(total)
        if candidate.operator in operators and key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique


def run_search(items: Sequence[Candidate], tuned, base, cfg, score: Callable, *, base_scores,
               tuned_scores, id_score: Callable | None = None, id_tuned=None,
               budget_s: float = 600.0, progress: bool = True) -> list[dict]:
    """Scores each candidate on the selection half in order until ``budget_s`` seconds are
    spent (a candidate starts only if the time left covers the slowest one so far; the first
    always runs). Returns one dict per candidate: ``candidate``, ``status`` (``scored`` or
    ``skipped (budget)``), ``score`` (mean item score), ``recovered`` (selection-half share),
    ``id_cost`` (mean ID score lost vs tuned; None without an ID probe), ``seconds``."""
    from tqdm.auto import tqdm

    began, slowest, rows = time.perf_counter(), 0.0, []
    bar = tqdm(items, desc="gate search", unit="candidate", disable=not progress)
    for candidate in bar:
        row = {"candidate": candidate.to_json(), "status": "skipped (budget)", "score": None,
               "recovered": None, "id_cost": None, "seconds": None}
        if rows and time.perf_counter() - began + slowest > budget_s:
            rows.append(row)
            continue
        start = time.perf_counter()
        repaired = jax.block_until_ready(candidate.apply(tuned, base, cfg))
        values = score(repaired)
        row.update(status="scored", score=float(np.mean(values)),
                   recovered=recovered_share(values, tuned_scores, base_scores))
        if id_score is not None:
            row["id_cost"] = float(np.mean(id_tuned) - np.mean(id_score(repaired)))
        del repaired
        row["seconds"] = time.perf_counter() - start
        slowest = max(slowest, row["seconds"])
        rows.append(row)
        best = choose(rows, math.inf)
        bar.set_postfix_str(f"best {rows[best]['candidate']['name']}: {rows[best]['recovered']:.2f}"
                            if best is not None and rows[best]["recovered"] == rows[best]["recovered"]
                            else "")
    return rows


def choose(rows: Sequence[dict], max_id_cost: float, tolerance: float = 0.0,
           cap: float = math.inf) -> int | None:
    """Index of the chosen scored row: among rows whose ID cost is within ``max_id_cost`` (all
    scored rows when none is), the *earliest* (highest-priority) row whose selection score,
    capped at ``cap``, is within ``tolerance`` of the best capped score — a later candidate
    must beat an earlier one by more than ``tolerance`` to win. The gate caps at the base's
    selection score: a reset is there to recover what was lost, and "better than the base" on a
    small selection half is mostly noise. None when nothing was scored."""
    scored = [i for i, r in enumerate(rows) if r["status"] == "scored"]
    within = [i for i in scored if rows[i]["id_cost"] is None or rows[i]["id_cost"] <= max_id_cost]
    pool = within or scored
    if not pool:
        return None
    capped = {i: min(rows[i]["score"], cap) for i in pool}
    best = max(capped.values())
    return min(i for i in pool if capped[i] >= best - tolerance)
