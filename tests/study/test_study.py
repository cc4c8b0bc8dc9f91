"""End to end: the smoke preset of `rotax study` through every stage, its artifacts and their
internal consistency; and a SIGKILL mid-study followed by a resume that skips finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rotax.study.report import recovered_fraction

pytestmark = pytest.mark.slow

# `smoke_run` (tests/conftest.py): the smoke study, SIGKILLed after its base stage and resumed.


def _stage(run_dir, name):
    return json.loads((run_dir / "stages" / f"{name}.json").read_text())


def test_resume_skips_finished_stages(smoke_run):
    run_dir, base_mtime, _ = smoke_run
    assert (run_dir / "stages" / "base.json").stat().st_mtime_ns == base_mtime
    for stage in ("base", "sft", "ppo", "analysis", "resets", "autoselect", "report"):
        assert (run_dir / "stages" / f"{stage}.json").is_file(), stage


def test_artifacts_exist(smoke_run):
    run_dir, _, _ = smoke_run
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert (run_dir / "base" / "config.json").is_file() and (run_dir / "base" / "tokenizer.json").is_file()
    assert list((run_dir / "analysis" / "vs_base").glob("*.png"))
    assert (run_dir / "analysis" / "vs_base" / "metrics.csv").is_file()
    assert (run_dir / "sft_curve.png").is_file()
    # the advantage panel: every PPO run logged its distribution per update, and the report shows it
    assert (run_dir / "ppo_advantages.png").is_file()
    assert "ppo_advantages.png" in (run_dir / "report.md").read_text()
    for run in _stage(run_dir, "ppo")["runs"]:
        rows = [json.loads(x) for x in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in rows if "train/advantage_p50" in r]
        assert len(logged) == run["updates"], run["label"]
        assert all(r["train/advantage_p05"] <= r["train/advantage_p50"] <= r["train/advantage_p95"]
                   for r in logged)
    sft = _stage(run_dir, "sft")
    assert sft["peak_step"] in sft["checkpoints"] and sft["end_step"] == max(sft["checkpoints"])


def _seed0_grid(run_dir):
    return {r["name"]: r for r in _stage(run_dir, "resets")["rows"] if r.get("sft_seed", 0) == 0}


def test_reset_with_k0_reproduces_the_target(smoke_run):
    run_dir, _, _ = smoke_run
    rows = _seed0_grid(run_dir)
    target, identity = rows["SFT end (no reset)"], rows["reset k=0 (identity check)"]
    assert identity["id"] == target["id"] and identity["ood"] == target["ood"]


def test_report_table_equals_stage_outputs(smoke_run):
    run_dir, _, _ = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    # SFT seed 0's own table (the headline averages over the smoke preset's two SFT seeds)
    assert [t["sft_seed"] for t in summary["seed_tables"]] == [0, 1]
    table = {r["name"]: r for r in summary["seed_tables"][0]["table"]}
    sft = _stage(run_dir, "sft")
    grid = _seed0_grid(run_dir)
    # the SFT rows come from the test hands (the grid), not the curve hands the peak was picked on
    assert f"SFT peak-OOD (step {sft['peak_step']})" not in table
    # "recovered" compares peak and end on the same test hands (the reset stage's rows)
    end_ood, peak_ood = grid["SFT end (no reset)"]["ood"]["mean"], grid["SFT peak-OOD (no reset)"]["ood"]["mean"]
    for row in grid.values():
        assert table[row["name"]]["id"]["mean"] == row["id"]["mean"]
        assert table[row["name"]]["ood"]["mean"] == row["ood"]["mean"]
        expected = None if row["kind"] in ("peak", "target") else \
            recovered_fraction(None, peak_ood, end_ood, row["ood"]["mean"])
        assert table[row["name"]]["recovered"] == expected
    starts = {sft["peak_step"]: peak_ood, sft["end_step"]: end_ood}
    for run in _stage(run_dir, "ppo")["runs"]:
        if run["sft_seed"]:
            continue
        row = table[f"PPO from {run['label']}"]
        assert row["ood"]["mean"] == run["final"]["ood"]["mean"]
        # PPO's recovery is measured from its own start checkpoint
        assert row["recovered"] == recovered_fraction(None, peak_ood, starts[run["start_step"]],
                                                      run["final"]["ood"]["mean"])
    markdown = (run_dir / "report.md").read_text()
    for row in summary["table"]:
        assert row["name"] in markdown
        assert f"{100 * row['ood']['mean']:.1f}" in markdown
    # the headline row is the mean of the seeds' rows
    seed1 = {r["name"]: r for r in summary["seed_tables"][1]["table"]}
    for row in summary["table"]:
        if row["name"] in seed1 and row["name"] in table:
            assert row["ood"]["mean"] == pytest.approx((table[row["name"]]["ood"]["mean"]
                                                        + seed1[row["name"]]["ood"]["mean"]) / 2)
    assert [c["sft_seed"] for c in summary["sft_curves"]] == [0, 1]
    assert sft["seeds"][1]["curve"] and (run_dir / "sft_seed1").is_dir()


def test_autoselect_is_the_gate_with_a_decision_per_ppo_start(smoke_run):
    from rotax.gate.decision import DECISIONS

    run_dir, _, _ = smoke_run
    auto = _stage(run_dir, "autoselect")
    gate = auto["gate"]
    assert gate["decision"] in DECISIONS and gate["chosen"]["name"] == auto["chosen"]
    scored = [c for c in auto["candidates"] if c["status"] == "scored"]
    assert scored and all(c["seconds"] > 0 for c in scored)
    # the probe's report half: 0/1 outcomes of probe_hands hands per model, means inside [0, 1]
    for model in ("base", "tuned", "repaired"):
        assert gate["probe"][model]["n"] == 32 and 0 <= gate["probe"][model]["mean"] <= 1
    # one call per PPO run of SFT seed 0 (the gate searched on seed 0's SFT end; the smoke
    # preset also has seed 1's runs, which start from other checkpoints)
    runs = [r for r in _stage(run_dir, "ppo")["runs"] if not r["sft_seed"]]
    assert runs and len(runs) < len(_stage(run_dir, "ppo")["runs"])
    assert [r["run"] for r in auto["by_start"]] == [r["label"] for r in runs]
    for row, run in zip(auto["by_start"], runs):
        assert row["decision"] in DECISIONS and row["start_step"] == run["start_step"]
    markdown = (run_dir / "report.md").read_text()
    assert "Gate (rotax gate, reference → SFT end): decision" in markdown
    assert markdown.count("Gate on PPO start") == len(runs)


def test_forced_stages_are_set_aside_not_deleted(tmp_path):
    from rotax.study.pipeline import set_aside

    files = {"stages/base.json": "b", "stages/sft.json": "s", "stages/ppo.json": "p",
             "sft/checkpoints/sft/20/state": "w", "sft/curve.jsonl": "c", "ppo/peak_seed0/metrics.jsonl": "m",
             "base/config.json": "keep"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    moved = set_aside(tmp_path, ["sft", "ppo", "analysis", "report"], "T")
    assert moved == tmp_path / "replaced" / "T"
    for rel, text in files.items():
        if rel.startswith(("stages/sft", "stages/ppo", "sft/", "ppo/")):
            assert not (tmp_path / rel).exists(), rel  # nothing left to resume from
            assert (moved / rel).read_text() == text, rel  # and nothing lost
        else:
            assert (tmp_path / rel).read_text() == text, rel  # earlier stages untouched
    assert set_aside(tmp_path, ["sft"], "T") is None  # nothing left to move
    (tmp_path / "sft").mkdir()
    assert set_aside(tmp_path, ["sft"], "T") == tmp_path / "replaced" / "T-1"  # same second


def test_claims_carry_ids_intervals_and_verdicts_that_follow_from_them(smoke_run):
    import numpy as np

    from rotax.stats.intervals import decode_outcomes

    run_dir, _, _ = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    merged = {c["id"]: c for c in summary["claims"]}
    # SFT seed 0's claim (the merged claim's estimate is the mean over the SFT seeds)
    claims = {i: {**c, **next(p for p in c["per_seed"] if p["sft_seed"] == 0)} for i, c in merged.items()}
    for c in merged.values():
        verdicts = {p["verdict"] for p in c["per_seed"]}
        assert c["verdict"] == (verdicts.pop() if len(verdicts) == 1 else "mixed") or c["verdict"] == "reported"
    assert {"sft_forgetting", "ppo_restores", "uv_merge_recovers", "layer_reset_recovers",
            "sigma_only_null", "autoselect", "sigma_stable"} <= set(claims)
    for c in claims.values():
        assert {"claim", "verdict", "estimate", "interval", "unit", "evidence"} <= set(c)
        assert len(c["interval"]) == 2
    grid = _seed0_grid(run_dir)
    peak, end = grid["SFT peak-OOD (no reset)"], grid["SFT end (no reset)"]
    outcome = {name: {s: decode_outcomes(r[s]["outcomes"]) for s in ("id", "ood")} for name, r in grid.items()}
    # the forgetting estimate is the paired OOD difference on the same test hands
    loss = outcome[peak["name"]]["ood"].mean() - outcome[end["name"]]["ood"].mean()
    forgetting = claims["sft_forgetting"]
    assert forgetting["estimate"] == np.float64(loss)
    assert forgetting["interval"][0] <= loss <= forgetting["interval"][1]
    lost = forgetting["interval"][0] > 0
    # each recovery verdict follows from its interval and the 70% level (numpy recomputation)
    for id_, prefix in (("uv_merge_recovers", "UV merge top 20%"), ("layer_reset_recovers", "layer reset first 25%")):
        c = claims[id_]
        row = next(r for name, r in grid.items() if name.startswith(prefix))
        rep, tuned, ref = (outcome[n]["ood"] for n in (row["name"], end["name"], peak["name"]))
        lost_share = ref.mean() - tuned.mean()
        if lost_share > 0:
            assert c["estimate"] == np.float64((rep.mean() - tuned.mean()) / lost_share)
        low, high = (float(x) if x is not None else float("nan") for x in c["interval"])
        if not lost:
            assert c["verdict"] == "not testable"
        elif high < 0.7:
            assert c["verdict"] == "not supported"
        elif low >= 0.7 and rep.mean() > tuned.mean():
            assert c["verdict"] in ("supported", "mixed")  # "supported" also needs the gain's interval > 0
        else:
            assert c["verdict"] == "mixed"


def test_rotax_export_reads_the_studys_sft_and_ppo_checkpoints(smoke_run, tmp_path):
    """`rotax export` on a study's SFT checkpoint and on a PPO policy checkpoint: the SFT export
    runs in transformers with the logits of the checkpoint's params, the PPO export holds the
    same tensors as the study's own export of that policy (``final_hf``)."""
    import jax
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    import rotax
    from rotax.cli import main as rotax_main
    from rotax.io.checkpoint import CheckpointStore, latest_checkpoint, restore_params
    from rotax.models.decoder import sharded_param_shapes

    run_dir = smoke_run[0]
    sft = _stage(run_dir, "sft")
    sft_checkpoint = CheckpointStore(run_dir / "sft", "sft").path(sft["end_step"])
    assert rotax_main(["export", "--checkpoint", str(sft_checkpoint), "--out", str(tmp_path / "sft")]) == 0
    cfg, _ = rotax.load_hf(run_dir / "base")
    params = restore_params(sft_checkpoint, sharded_param_shapes(cfg, rotax.make_mesh(devices=jax.devices()[:1])))
    tokens = np.array([[1, 5, 9, 4, 7, 3, 2, 8]], dtype=np.int32)
    ours = np.asarray(rotax.forward(cfg, params, tokens))
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"), dtype=torch.float32)(
            torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)

    run = next(r for r in _stage(run_dir, "ppo")["runs"] if not r["sft_seed"])
    ppo_checkpoint = latest_checkpoint(run["run_dir"], "ppo")
    assert rotax_main(["export", "--checkpoint", str(ppo_checkpoint), "--out", str(tmp_path / "ppo")]) == 0
    exported = load_file(str(tmp_path / "ppo" / "model.safetensors"))
    study_export = load_file(str(Path(run["policy_dir"]) / "model.safetensors"))
    assert exported.keys() == study_export.keys()
    for name, tensor in study_export.items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
