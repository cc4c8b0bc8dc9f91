"""The report's advantage panel: per-update history read back from metrics.jsonl (resumed runs
log a step twice), the first-update numbers the report quotes, and the figure."""

import json

import numpy as np
import pytest

from rotax.study.advantage_panel import advantage_figure, advantage_history, by_start, first_update_summary

QUANTILES = ("p05", "p25", "p50", "p75", "p95")


def _write_run(run_dir, rng, updates=4, quantiles=True, resumed_at=None):
    run_dir.mkdir(parents=True)
    lines, logged = [json.dumps({"stage": "ppo", "step": 0, "eval/ood_accuracy": 0.5})], {}
    steps = list(range(1, updates + 1))
    if resumed_at is not None:  # the killed run logged these steps before the resumed one did
        steps = list(range(1, resumed_at + 1)) + list(range(resumed_at, updates + 1))
    for step in steps:
        values = rng.normal(size=50)
        stats = {"mean": values.mean(), "std": values.std(ddof=1), "skewness": rng.normal(),
                 "positive_share": np.mean(values > 0)}
        if quantiles:
            stats.update(zip(QUANTILES, np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])))
        row = {"stage": "ppo", "step": step, "train/loss": 1.0,
               **{f"train/advantage_{k}": float(v) for k, v in stats.items()}}
        lines.append(json.dumps(row))
        logged[step] = row  # the last row of a step is the one that counts
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return logged


def test_history_keeps_the_last_row_of_a_step_and_summary_averages_seeds(tmp_path):
    rng = np.random.default_rng(0)
    runs, logged = [], {}
    for start in ("peak", "end"):
        for seed in (0, 1):
            label = f"{start}_seed{seed}"
            logged[label] = _write_run(tmp_path / label, rng, resumed_at=2 if seed else None)
            runs.append({"label": label, "start": start, "seed": seed, "run_dir": str(tmp_path / label)})

    history = advantage_history(tmp_path / "peak_seed1")
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert history[1]["skewness"] == logged["peak_seed1"][2]["train/advantage_skewness"]

    summary = first_update_summary(by_start(runs))
    assert set(summary) == {"peak", "end"}
    for start in ("peak", "end"):
        firsts = [logged[f"{start}_seed{s}"][1] for s in (0, 1)]
        assert summary[start]["seeds"] == 2
        assert summary[start]["skewness"] == pytest.approx(np.mean([r["train/advantage_skewness"] for r in firsts]))
        assert summary[start]["positive_share"] == pytest.approx(
            np.mean([r["train/advantage_positive_share"] for r in firsts]))
        assert summary[start]["spread"] == pytest.approx(
            np.mean([r["train/advantage_p95"] - r["train/advantage_p05"] for r in firsts]))

    path = advantage_figure(by_start(runs), tmp_path / "advantages.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_logged_without_quantiles_still_plot_and_have_no_spread(tmp_path):
    _write_run(tmp_path / "old", np.random.default_rng(1), quantiles=False)
    runs = [{"label": "old", "start": "end", "seed": 0, "run_dir": str(tmp_path / "old")}]
    assert first_update_summary(by_start(runs))["end"]["spread"] is None
    assert advantage_figure(by_start(runs), tmp_path / "a.png").is_file()


def test_no_logged_advantages_means_no_figure(tmp_path):
    (tmp_path / "empty").mkdir()
    runs = [{"label": "x", "start": "end", "seed": 0, "run_dir": str(tmp_path / "empty")}]
    assert by_start(runs) == {}
    assert advantage_figure({}, tmp_path / "a.png") is None
    assert first_update_summary({}) == {}
