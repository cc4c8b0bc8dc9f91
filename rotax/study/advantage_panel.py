"""The advantage-distribution panel of the study report (SPEC §3: log the advantage distribution
per update; the papers tie the window of SFT checkpoints PPO can restore to a flat one).

:func:`advantage_history` reads the per-update statistics a PPO run logged (``train/advantage_*``
in its ``metrics.jsonl``) and :func:`by_start` groups the runs' histories; from those groups
:func:`advantage_figure` draws, per PPO start (one row each), the
distribution of the raw advantages over updates as a fan (5–95% and 25–75% bands, median; mean ±
std for runs logged before the quantiles were), its skewness and its share of positive entries
(one line per seed). :func:`first_update_summary` gives the numbers the report's paragraph quotes.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

PREFIX = "train/advantage_"


def advantage_history(run_dir: str | Path) -> list[dict]:
    """``[{"step", "mean", "std", "skewness", "positive_share", "p05", ...}]`` per PPO update,
    sorted by step; a step logged twice (a resumed run) keeps its last row."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            stats = {k[len(PREFIX):]: v for k, v in row.items() if k.startswith(PREFIX)}
            if stats:
                rows[int(row["step"])] = {"step": int(row["step"]), **stats}
    return [rows[s] for s in sorted(rows)]


Groups = dict  # {start: [(run, history), ...]}, as by_start returns


def by_start(runs: list[dict]) -> Groups:
    """``{start: [(run, advantage_history(run["run_dir"]))]}`` for the PPO runs that logged
    advantages (runs carry ``label``, ``start``, ``seed``, ``run_dir``)."""
    groups: dict[str, list] = {}
    for run in runs:
        history = advantage_history(run["run_dir"])
        if history:
            groups.setdefault(run["start"], []).append((run, history))
    return groups


def _fan(ax, history: list[dict]) -> None:
    steps = [h["step"] for h in history]
    if all("p05" in h for h in history):
        for lo, hi, alpha in (("p05", "p95", 0.2), ("p25", "p75", 0.4)):
            ax.fill_between(steps, [h[lo] for h in history], [h[hi] for h in history],
                            color="tab:purple", alpha=alpha, lw=0, label=f"{lo[1:]}–{hi[1:]}%")
        ax.plot(steps, [h["p50"] for h in history], color="tab:purple", label="median")
    else:
        mean, std = np.array([h["mean"] for h in history]), np.array([h["std"] for h in history])
        ax.fill_between(steps, mean - std, mean + std, color="tab:purple", alpha=0.3, lw=0, label="mean ± std")
        ax.plot(steps, mean, color="tab:purple", label="mean")
    ax.axhline(0, color="0.5", lw=0.8)


def advantage_figure(groups: Groups, path: str | Path) -> Path | None:
    """One row per PPO start: the first seed's distribution fan, then skewness and positive
    share of every seed, over updates. None when no run logged advantages."""
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 3, figsize=(11, 2.9 * len(groups)), squeeze=False)
    for row, (start, members) in zip(axes, groups.items()):
        first_run, first_history = min(members, key=lambda m: m[0].get("seed", 0))
        _fan(row[0], first_history)
        row[0].set_title(f"from {start}: raw advantages ({first_run['label']})", fontsize=9)
        for run, history in members:
            steps = [h["step"] for h in history]
            row[1].plot(steps, [h["skewness"] for h in history], "o-", ms=3, label=f"seed {run.get('seed', '?')}")
            row[2].plot(steps, [h["positive_share"] for h in history], "o-", ms=3, label=f"seed {run.get('seed', '?')}")
        row[1].axhline(0, color="0.5", lw=0.8)
        row[1].set_title(f"from {start}: skewness", fontsize=9)
        row[2].set_title(f"from {start}: share of advantages > 0", fontsize=9)
        row[2].set_ylim(0, 1)
        for ax in row:
            ax.set_xlabel("PPO update")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def first_update_summary(groups: Groups) -> dict[str, dict]:
    """Per start, the seed mean of the first update's skewness, positive share and (when
    logged) 5–95% spread: ``{start: {"skewness", "positive_share", "spread" | None, "seeds"}}``."""
    out = {}
    for start, members in groups.items():
        firsts = [history[0] for _, history in members]
        spreads = [h["p95"] - h["p05"] for h in firsts if "p95" in h and "p05" in h]
        out[start] = {"skewness": float(np.mean([h["skewness"] for h in firsts])),
                      "positive_share": float(np.mean([h["positive_share"] for h in firsts])),
                      "spread": float(np.mean(spreads)) if len(spreads) == len(firsts) else None,
                      "seeds": len(firsts)}
    return out
