"""scripts/accelerator_check.py in its --cpu smoke mode: every check runs, prints JSON lines,
and its parity figures agree with transformers (the oracle the script itself uses, re-checked
here against fixed tolerances) and its sharded step with the one-device step."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_accelerator_check_cpu_smoke_mode_prints_every_figure():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE")
    env.pop("XLA_FLAGS", None)
    # the smoke study is exercised by tests/study (the session's smoke_run); skipped here for time
    proc = subprocess.run([sys.executable, "scripts/accelerator_check.py", "--cpu", "--no-study"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_check = {}
    for record in records:
        by_check.setdefault(record["check"], []).append(record)
    assert set(by_check) == {"environment", "matmul_peak_gflops", "parity", "throughput",
                             "sharded_step", "summary"}
    assert by_check["environment"][0]["backend"] == "cpu"
    assert by_check["environment"][0]["devices"] == 2
    assert by_check["summary"][0] == {**by_check["summary"][0], "ok": True, "failed": []}

    parity = {r["case"]: r for r in by_check["parity"]}
    assert set(parity) == {"tiny-llama/float32", "tiny-llama/bfloat16", "tiny-qwen2/float32",
                           "tiny-qwen2/bfloat16"}
    for case, record in parity.items():
        if case.endswith("float32"):
            assert record["rel_max_error"] < 1e-5, record
        else:  # bf16 logits: same order as torch's own bf16 error, and not exact
            assert 1e-4 < record["rel_max_error"] < 2 * record["torch_bf16_rel_max_error"] + 0.01, record

    speed = {r["case"]: r for r in by_check["throughput"]}
    assert set(speed) == {"forward/float32", "sft_step/float32", "generate/float32"}
    for record in speed.values():
        assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 2, record
    assert 5.0 < speed["sft_step/float32"]["loss"] < 7.5  # ~ln(512) for random weights

    sharded = by_check["sharded_step"][0]
    assert sharded["devices"] == 2 and sharded["rel_loss_gap"] < 1e-5 and sharded["rel_grad_norm_gap"] < 1e-4
    assert sharded["max_weight_gap_over_max_update"] < 1e-2  # AdamW: sign(g) of near-zero g
