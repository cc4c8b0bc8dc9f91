"""Accuracy curves along a training stage, kept in a JSONL file so an interrupted and resumed
stage still reports every evaluation it made."""

from __future__ import annotations

import json
from pathlib import Path


def tracked_curve(ctx, curve_file: Path):
    """``(curve, hook)``: ``curve`` is the list of ``{"step", "id", "ood"}`` evaluations so far
    (one per step, read back from ``curve_file``); ``hook(params, step)`` evaluates ID and OOD
    accuracy on ``study.eval_hands`` hands, records it, and returns the metrics a training loop
    logs."""
    curve_file = Path(curve_file)
    curve_file.parent.mkdir(parents=True, exist_ok=True)
    by_step = {}
    if curve_file.is_file():
        for line in curve_file.read_text().splitlines():
            entry = json.loads(line)
            by_step[entry["step"]] = entry  # the latest evaluation of a step wins
    curve = sorted(by_step.values(), key=lambda c: c["step"])

    def hook(params, step):
        acc = ctx.evaluate_id_ood(params, n=ctx.config.study.eval_hands, seeds=(0,))
        entry = {"step": int(step), **acc}
        curve[:] = sorted([c for c in curve if c["step"] != step] + [entry], key=lambda c: c["step"])
        with open(curve_file, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return {"id_accuracy": acc["id"]["mean"], "ood_accuracy": acc["ood"]["mean"]}

    return curve, hook
