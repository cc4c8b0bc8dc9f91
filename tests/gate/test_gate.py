"""`rotax gate` on a tiny planted-drift pair (tests/support/gate_fixtures.py): the NLL score
against transformers, the diagnosis / choice / decision on known damage, the outputs, and the
named errors for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from rotax.analysis.selectors import parse_layers
from rotax.gate.decision import decide
from rotax.gate.pipeline import GateSettings, check_inputs, run_gate
from rotax.gate.probes import ProbeError, read_chat_jsonl
from rotax.gate.scoring import NllScorer
from rotax.gate.search import UnknownOperatorError, choose
from rotax.io.hf import load_hf_checkpoint
from rotax.io.tokenizer import load_tokenizer
from tests.support import gate_fixtures


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    base, tuned = gate_fixtures.make_pair(root)
    probe = gate_fixtures.greedy_probe(base, root / "probe.jsonl", n=48)
    return base, tuned, probe, root


def test_nll_score_equals_transformers(pair):
    base, tuned, probe, _ = pair
    cfg, params = load_hf_checkpoint(tuned)
    examples = read_chat_jsonl(probe)
    # batch 5 (not a divisor of 48): the last batch is padded with copies, rows are length-bucketed
    ours = -NllScorer(cfg, load_tokenizer(tuned), examples, batch_size=5)(params)
    oracle = gate_fixtures.torch_answer_nll(tuned, probe)
    assert ours.shape == oracle.shape == (48,)
    np.testing.assert_allclose(ours, oracle, rtol=1e-4)


def test_planted_drift_is_found_repaired_and_decided_reset(pair):
    base, tuned, probe, root = pair
    out = root / "planted"
    result = run_gate(base, tuned, out, GateSettings(probe=str(probe), budget_s=300, progress=False))
    assert result["diagnosis"]["layers"] == [0, 1]
    assert result["diagnosis"]["beyond_null"]
    chosen = result["chosen"]
    assert {0, 1} <= set(parse_layers(chosen["layers"], 4))
    assert result["recovered"] >= 0.9
    assert result["decision"] == "reset", result["reason"]
    assert result["recovered_interval"][0] >= 0.7
    # the damage shows in the report-half scores: tuned NLL above base, repaired back down
    nll = result["probe"]
    assert nll["unit"] == "nll" and nll["tuned"]["mean"] > nll["base"]["mean"] + 0.3
    saved = json.loads((out / "gate.json").read_text())
    for key in ("decision", "chosen", "probe", "recovered", "recovered_interval", "id_cost",
                "candidates", "seconds"):
        assert key in saved
    assert all(r["seconds"] > 0 for r in saved["candidates"] if r["status"] == "scored")
    assert "Decision: reset" in (out / "gate.md").read_text()
    assert "<table>" in (out / "gate.html").read_text()
    assert (out / "diagnosis_rotation.png").stat().st_size > 1000
    # the repaired directory: untouched tensors byte-identical to the tuned model's
    repaired = load_file(str(out / "model" / "model.safetensors"))
    original = load_file(str(tuned / "model.safetensors"))
    base_tensors = load_file(str(base / "model.safetensors"))
    touched = set(parse_layers(chosen["layers"], 4))
    for name, value in repaired.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if layer is None or layer not in touched:
            assert value.tobytes() == original[name].tobytes(), name
    if chosen["operator"] == "layer-reset":
        for name in repaired:
            if name.startswith("model.layers.0.") or name.startswith("model.layers.1."):
                assert repaired[name].tobytes() == base_tensors[name].tobytes(), name
    from transformers import LlamaForCausalLM

    assert LlamaForCausalLM.from_pretrained(str(out / "model")) is not None


def test_undamaged_model_decides_none(pair):
    base, _, probe, root = pair
    result = run_gate(base, base, root / "same", GateSettings(
        probe=str(probe), operators="layer-reset", budget_s=60, progress=False))
    assert result["decision"] == "none"
    assert result["lost"] == 0.0
    assert not result["diagnosis"]["beyond_null"]


# ------------------------------------------------------------ bad inputs, before any work


def test_bad_inputs_get_named_errors(pair, tmp_path):
    base, tuned, probe, root = pair
    settings = lambda **kw: GateSettings(**{"probe": str(probe), **kw})  # noqa: E731
    with pytest.raises(UnknownOperatorError, match="'uv-mege'"):
        check_inputs(base, tuned, tmp_path / "o", settings(operators="layer-reset,uv-mege"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ProbeError, match="empty"):
        check_inputs(base, tuned, tmp_path / "o", settings(probe=str(empty)))
    lines = probe.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], "{not json", lines[2]]) + "\n")
    with pytest.raises(ProbeError, match="line 3"):
        check_inputs(base, tuned, tmp_path / "o", settings(probe=str(bad)))
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text("\n".join([lines[0], json.dumps({"messages": [{"role": "user",
                                                                         "content": "A"}]})]))
    with pytest.raises(ProbeError, match="line 2: 'answer'"):
        check_inputs(base, tuned, tmp_path / "o", settings(probe=str(no_answer)))
    long = tmp_path / "long.jsonl"
    long.write_text("\n".join([lines[0], json.dumps({"messages": [{"role": "user", "content":
                                                                    " ".join(["7"] * 600)}],
                                                      "answer": "8"})]))
    with pytest.raises(ProbeError, match="line 2: .*exceed the model's context of 512"):
        check_inputs(base, tuned, tmp_path / "o", settings(probe=str(long)))
    other = gate_fixtures.make_pair(tmp_path / "wide", damage_layers=(), intermediate=48)[0]
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.mlp\.\w+_proj\.weight': tuned "
                                         r"shape \(4, \d+, \d+\) vs base shape"):
        check_inputs(other, tuned, tmp_path / "o", settings())
    assert not (tmp_path / "o").exists()


def test_cli_reports_an_unknown_operator_without_a_traceback(pair, tmp_path, capsys):
    from rotax.cli import main

    base, tuned, probe, _ = pair
    code = main(["gate", "--base", str(base), "--tuned", str(tuned), "--probe", str(probe),
                 "--out", str(tmp_path / "o"), "--operators", "rotate"])
    assert code == 2
    assert "unknown operator 'rotate'" in capsys.readouterr().err


# ------------------------------------------------------------ decision and choice rules


def test_decision_rules_on_known_outcomes():
    ones, zeros = np.ones(40), np.zeros(40)
    full = decide(ones, zeros, ones, binary=True, draws=200)
    assert full["decision"] == "reset" and full["recovered"] == 1.0
    assert full["recovered_interval"] == [1.0, 1.0]
    nothing = decide(ones, zeros, zeros, binary=True, draws=200)
    assert nothing["decision"] == "rl" and nothing["recovered"] == 0.0
    same = decide(ones, ones, ones, binary=True, draws=200)
    assert same["decision"] == "none"
    # a full recovery that costs the ID probe 40 of 40 items: not a reset
    costly = decide(ones, zeros, ones, binary=True, id_tuned=ones, id_repaired=zeros, draws=200)
    assert costly["decision"] == "rl" and costly["id_cost"] == 1.0


def test_choice_prefers_the_earlier_candidate_within_tolerance():
    rows = [{"status": "scored", "score": -2.4207, "id_cost": None},
            {"status": "skipped (budget)", "score": None, "id_cost": None},
            {"status": "scored", "score": -2.4198, "id_cost": None},
            {"status": "scored", "score": -2.0, "id_cost": 0.5}]
    assert choose(rows, max_id_cost=0.1, tolerance=0.01) == 0
    assert choose(rows, max_id_cost=0.1, tolerance=0.0) == 2
    assert choose(rows, max_id_cost=1.0, tolerance=0.01) == 3
    # capped at the base's score (-2.41): both first rows reach it, the earlier one wins
    assert choose(rows, max_id_cost=0.1, tolerance=0.0, cap=-2.41 - 0.1) == 0


def test_gate_runs_sharded_on_a_mesh(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.support.gate_mesh_check", str(tmp_path)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mesh gate ok" in proc.stdout


def test_tuned_may_be_a_rotax_training_checkpoint(pair, tmp_path):
    import jax

    from rotax.gate.pipeline import load_pair
    from rotax.io.checkpoint import CheckpointStore

    base, tuned, _, _ = pair
    _, params = load_hf_checkpoint(tuned)
    store = CheckpointStore(tmp_path, "sft", async_save=False)
    path = store.save(7, {"params": params}, {"note": "test"})
    store.close()
    cfg, base_params, restored = load_pair(base, path)
    _, expected_base = load_hf_checkpoint(base)
    for got, want in ((restored, params), (base_params, expected_base)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert cfg.num_layers == 4
