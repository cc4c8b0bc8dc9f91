"""Diagnosis: which layers × module types of the tuned model moved beyond a random change.

For every weight matrix, ``rotax.analysis.spectral.analyze(base, tuned)`` gives the rotation of
the top-``k`` singular subspaces (``rotation`` = mean of the normalized chordal distances of U
and V, in [0, 1]) and the Σ drift (mean |Δσ|/σ), each beside the same statistic of the
matched-norm null (the base plus an isotropic random change of the same Frobenius norm). A cell
(layer, module) *moved beyond the null* when its ``excess`` — the larger of rotation / null
rotation and Σ drift / null Σ drift — exceeds ``threshold``; cells the tuning did not change
at all (ΔW = 0) have excess 0. Cells are ranked by excess; the layers (at most half of them,
the most-moved) and modules of the moved cells are the search's first candidates. When no cell passes, the layers with the
largest relative change ‖ΔW‖/‖W‖ (the top quarter) stand in, and the diagnosis says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from rotax.analysis import spectral
from rotax.analysis.plots import plot_angle_heatmap
from rotax.analysis.selectors import MODULE_TYPES


@dataclasses.dataclass
class Diagnosis:
    """``cells``: one dict per (layer, module) (``layer`` None for embed/head), ranked by
    ``excess`` (descending); ``layers``/``modules``: those of the moved cells (or the
    fallback); ``beyond_null``: whether any cell moved beyond the null; ``rows``: the
    spectral rows the cells were built from (for the heatmaps)."""

    cells: list[dict]
    layers: tuple[int, ...]
    modules: tuple[str, ...]
    beyond_null: bool
    threshold: float
    rows: list[dict]
    seconds: float = 0.0

    def to_json(self, top: int = 12) -> dict:
        return {"layers": list(self.layers), "modules": list(self.modules),
                "beyond_null": self.beyond_null, "threshold": self.threshold,
                "seconds": self.seconds, "ranked": self.cells[:top]}

    def heatmaps(self, out_dir) -> list[Path]:
        """``diagnosis_rotation.png`` and ``diagnosis_sigma.png``: HF layer × module, the
        statistic and its ratio to the null."""
        out_dir = Path(out_dir)
        return [plot_angle_heatmap(self.rows, out_dir / "diagnosis_rotation.png", metric="rotation"),
                plot_angle_heatmap(self.rows, out_dir / "diagnosis_sigma.png", metric="sigma_drift")]


def _ratio(value: float, null: float) -> float:
    if not null or not math.isfinite(null):
        return math.inf if value > 0 else 0.0
    return value / null


def cells_of(rows: list[dict]) -> list[dict]:
    """One cell per spectral row: rotation, Σ drift, their nulls, relative change, excess."""
    cells = []
    for row in rows:
        rotation = 0.5 * (row["chordal_norm_u"] + row["chordal_norm_v"])
        null_rotation = 0.5 * (row.get("null_chordal_norm_u", math.nan)
                               + row.get("null_chordal_norm_v", math.nan))
        row["rotation"], row["null_rotation"] = rotation, null_rotation
        changed = row["rel_delta_norm"] > 0
        excess = max(_ratio(rotation, null_rotation),
                     _ratio(row["sigma_drift"], row.get("null_sigma_drift", math.nan))) if changed else 0.0
        cells.append({"layer": row["layer"], "module": row["module"], "tensor": row["tensor"],
                      "rotation": rotation, "null_rotation": null_rotation,
                      "sigma_drift": row["sigma_drift"],
                      "null_sigma_drift": row.get("null_sigma_drift", math.nan),
                      "rel_delta_norm": row["rel_delta_norm"], "excess": excess})
    order = {m: i for i, m in enumerate(MODULE_TYPES)}
    cells.sort(key=lambda c: (-c["excess"], -c["rel_delta_norm"], c["layer"] if c["layer"] is not None
                              else -1, order.get(c["module"], 99)))
    return cells


def diagnose(base, tuned, cfg, *, k: float = 0.2, null_seeds: int = 2, threshold: float = 1.2,
             max_share: float = 0.5, progress: bool = False) -> Diagnosis:
    """The :class:`Diagnosis` of ``tuned`` against ``base`` (canonical trees, sharded or not)."""
    began = time.perf_counter()
    result = spectral.analyze(base, tuned, k=k, null_seeds=null_seeds, layer_ids=cfg.layer_ids,
                              progress=progress)
    cells = cells_of(result.rows)
    moved = [c for c in cells if c["excess"] > threshold]
    if moved:
        num_layers = len({c["layer"] for c in cells if c["layer"] is not None})
        layers = moved_layers(moved, num_layers, max_share)
        modules = [m for m in MODULE_TYPES if any(c["module"] == m for c in moved)]
    else:
        layers, modules = fallback_layers(cells), []
    return Diagnosis(cells, tuple(layers), tuple(modules), bool(moved), threshold, result.rows,
                     time.perf_counter() - began)


def moved_layers(moved: list[dict], num_layers: int, max_share: float) -> list[int]:
    """HF layers of the ``moved`` cells (ranked by excess), at most ``max_share`` of the model's
    ``num_layers`` (rounded half up, at least 1) — the most-moved ones: resetting (nearly)
    every layer is no targeted repair."""
    order = list(dict.fromkeys(c["layer"] for c in moved if c["layer"] is not None))
    return sorted(order[:max(1, int(max_share * num_layers + 0.5))])


def fallback_layers(cells: list[dict], share: float = 0.25) -> list[int]:
    """The top ``share`` of layers by mean relative change (none when nothing changed)."""
    by_layer: dict[int, list[float]] = {}
    for cell in cells:
        if cell["layer"] is not None:
            by_layer.setdefault(cell["layer"], []).append(cell["rel_delta_norm"])
    means = {layer: float(np.mean(v)) for layer, v in by_layer.items() if np.mean(v) > 0}
    count = max(1, round(share * len(by_layer))) if means else 0
    return sorted(sorted(means, key=lambda layer: -means[layer])[:count])
