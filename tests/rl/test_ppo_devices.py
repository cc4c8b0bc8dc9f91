"""8 simulated devices (a 2x2x2 data/fsdp/tensor mesh, from rotax.make_mesh and from jax.make_mesh)
match 1 device for whole PPO updates."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_eight_devices_match_one(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", XLA_FLAGS="--xla_backend_optimization_level=0",
               PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "tests.support.ppo_devices_check", str(tmp_path)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for mesh in ("2x2x2", "explicit 2x2x2"):  # rotax.make_mesh and jax.make_mesh (Explicit axes)
        r = result[mesh]
        assert r["devices_holding_q"] == 8, r  # the weights really are spread over the devices
        assert r["metric_diff"]["train/reward_mean"] == 0.0, r  # same samples, same rewards
        assert r["param_diff"] < 1e-3 * result["moved"], (r, result["moved"])
        assert max(r["metric_diff"].values()) < 1e-5, r
