"""PNG figures of a spectral analysis (``rotax.analysis.spectral.SpectralResult``).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend change). Every rotation figure shows the matched-norm null beside the data when the
analysis ran one, since "values stable, vectors rotate" is what any random change of the same
size also produces (TOY-NOTES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rotax.analysis.selectors import MODULE_TYPES

BANDS = ("head", "middle", "tail")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_spectra(result, tensors: Sequence[str], path, target: str = "target") -> Path:
    """Per tensor (columns): σ_ref, σ_tgt (and the null's σ) on a log axis, then the relative
    change (σ_t − σ_r)/σ_r per index against the null's. ``tensors``: HF-numbered names."""
    fig = _figure(4.2 * max(1, len(tensors)), 6.0)
    axes = fig.subplots(2, max(1, len(tensors)), squeeze=False)
    for col, tensor in enumerate(tensors):
        prefix = f"{target}/{tensor}/"
        s_ref, s_tgt = result.arrays[prefix + "sigma_ref"], result.arrays[prefix + "sigma_tgt"]
        s_null = result.arrays.get(prefix + "sigma_null")
        top, bottom = axes[0, col], axes[1, col]
        index = np.arange(len(s_ref))
        top.semilogy(index, s_ref, label="reference", lw=1.2)
        top.semilogy(index, s_tgt, label=target, lw=1.0, ls="--")
        top.set_title(tensor.replace("model.", ""), fontsize=8)
        top.set_ylabel("σ")
        bottom.plot(index, (s_tgt - s_ref) / s_ref, lw=0.8, label=target)
        if s_null is not None:
            bottom.plot(index, (s_null - s_ref) / s_ref, lw=0.8, alpha=0.6, label="matched-norm null")
        bottom.axhline(0.0, color="k", lw=0.5)
        bottom.set_xlabel("index")
        bottom.set_ylabel("Δσ / σ_ref")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    return _save(fig, path)


def plot_angle_heatmap(rows: Iterable[Mapping[str, Any]], path, metric: str = "chordal_norm_u",
                       target: str | None = None) -> Path:
    """Heatmap of a normalized rotation metric (default chordal/√(2k) ∈ [0, 1]) over HF layer
    (rows) × module type (columns); with a null control, a second panel shows metric / null."""
    rows = [r for r in rows if r["layer"] is not None and (target is None or r["target"] == target)]
    layers = sorted({r["layer"] for r in rows})
    modules = [m for m in MODULE_TYPES if any(r["module"] == m for r in rows)]
    grid = np.full((len(layers), len(modules)), np.nan)
    ratio = np.full_like(grid, np.nan)
    for r in rows:
        i, j = layers.index(r["layer"]), modules.index(r["module"])
        grid[i, j] = r[metric]
        if r.get(f"null_{metric}"):
            ratio[i, j] = r[metric] / r[f"null_{metric}"]
    panels = [(grid, metric, "viridis")]
    if np.isfinite(ratio).any():
        panels.append((ratio, f"{metric} / null", "coolwarm"))
    fig = _figure(3.2 * len(panels) + 0.8, 0.25 * len(layers) + 2.0)
    for ax, (data, title, cmap) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_xticks(range(len(modules)), modules)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
        ax.set_xlabel("module")
        ax.set_ylabel("HF layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_band_rotation(rows: Iterable[Mapping[str, Any]], path, side: str = "u",
                       target: str | None = None) -> Path:
    """Grouped bars per module type: mean sin² of the principal angles between matching
    head / middle / tail bands of the reference and target spectra (hatched: the null)."""
    rows = [r for r in rows if target is None or r["target"] == target]
    modules = [m for m in MODULE_TYPES if any(r["module"] == m for r in rows)]
    fig = _figure(1.0 + 1.1 * len(modules), 3.6)
    ax = fig.subplots()
    width = 0.8 / len(BANDS)
    for b, band in enumerate(BANDS):
        column = f"band_sin2_{side}_{band}"
        values = [np.mean([r[column] for r in rows if r["module"] == m]) for m in modules]
        x = np.arange(len(modules)) + (b - 1) * width
        ax.bar(x, values, width * 0.9, color=f"C{b}", label=band)
        nulls = [[r.get(f"null_{column}") for r in rows if r["module"] == m] for m in modules]
        if all(v is not None for group in nulls for v in group) and rows:
            ax.bar(x, [np.mean(g) for g in nulls], width * 0.9, fill=False, hatch="//",
                   edgecolor=f"C{b}", label=f"{band} (null)")
    ax.set_xticks(range(len(modules)), modules)
    ax.set_ylabel(f"mean sin²θ ({side.upper()} bands)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_drift_vs_rotation(rows: Iterable[Mapping[str, Any]], path,
                           rotation: str = "chordal_norm_u") -> Path:
    """One point per target: mean Σ drift (x, log) vs mean rotation (y), each joined to its
    matched-norm null (hollow marker) — where a target sits relative to its null is the finding."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["target"], []).append(r)
    fig = _figure(5.0, 4.0)
    ax = fig.subplots()
    for label, members in groups.items():
        x = np.mean([r["sigma_drift"] for r in members])
        y = np.mean([r[rotation] for r in members])
        (point,) = ax.plot([x], [y], "o", label=label)
        if all(f"null_{rotation}" in r for r in members):
            nx = np.mean([r["null_sigma_drift"] for r in members])
            ny = np.mean([r[f"null_{rotation}"] for r in members])
            ax.plot([nx], [ny], "o", mfc="none", color=point.get_color())
            ax.plot([x, nx], [y, ny], ":", color=point.get_color(), lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("mean Σ drift  mean|Δσ|/σ")
    ax.set_ylabel(f"mean {rotation}")
    ax.set_title("filled: target, hollow: matched-norm null", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_all(result, out_dir, tensors: Sequence[str] | None = None) -> list[Path]:
    """All figures into ``out_dir``; ``tensors`` for the spectra panel defaults to one matrix
    per module type of the first stacked layer of the first target."""
    out_dir = Path(out_dir)
    targets = list(dict.fromkeys(r["target"] for r in result.rows))
    paths = []
    if tensors is None:
        first = {}
        for r in result.rows:
            if r["target"] == targets[0]:
                first.setdefault(r["module"], r["tensor"])
        tensors = list(first.values())[:4]
    for target in targets:
        stem = "" if len(targets) == 1 else f"_{target}"
        paths.append(plot_spectra(result, tensors, out_dir / f"spectra{stem}.png", target))
        if any(r["layer"] is not None for r in result.rows):
            paths.append(plot_angle_heatmap(result.rows, out_dir / f"angles{stem}.png", target=target))
        paths.append(plot_band_rotation(result.rows, out_dir / f"bands{stem}.png", target=target))
    paths.append(plot_drift_vs_rotation(result.rows, out_dir / "drift_vs_rotation.png"))
    return paths
