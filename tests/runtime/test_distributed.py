"""Multi-host on one machine: 2 processes x 4 CPU devices share one (1, 4, 2) mesh.

Each process calls ``rotax.runtime.distributed.maybe_initialize`` (which calls
``jax.distributed.initialize`` with a localhost coordinator), loads a tiny random Llama onto the
global mesh with ``rotax.load_hf`` and runs ``rotax.forward``; the logits gathered with
``process_allgather`` must equal a single-process, single-device run.

The worker half of this file runs as ``python -m tests.runtime.test_distributed WORKER ...``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rotax.runtime import distributed
from tests.support import multihost

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
MESH_SHAPE = (1, 4, 2)
WORKER_TIMEOUT_S = 240  # ~16 s on an idle 2-core machine; generous for a loaded one


# ---------------------------------------------------------------- environment detection (fast)


def test_single_process_environment_is_not_distributed():
    assert distributed.distributed_settings({}) is None
    assert distributed.distributed_settings({"ROTAX_DISTRIBUTED": "0", "SLURM_JOB_ID": "1",
                                             "SLURM_NTASKS": "4"}) is None
    # one SLURM task, one TPU host: nothing to coordinate
    assert distributed.distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.distributed_settings({"TPU_WORKER_HOSTNAMES": "t1k-w-0"}) is None


def test_cluster_environments_are_detected():
    slurm = distributed.distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"})
    assert slurm.reason == "SLURM_NTASKS" and slurm.num_processes is None  # JAX reads SLURM vars
    tpu = distributed.distributed_settings({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"})
    assert tpu.reason == "TPU_WORKER_HOSTNAMES"
    forced = distributed.distributed_settings({"ROTAX_DISTRIBUTED": "1"})
    assert forced.reason == "ROTAX_DISTRIBUTED" and forced.coordinator_address is None


def test_explicit_settings_and_their_errors():
    s = distributed.distributed_settings({"ROTAX_COORDINATOR_ADDRESS": "10.0.0.2:8476",
                                          "ROTAX_NUM_PROCESSES": "4", "ROTAX_PROCESS_ID": "3"})
    assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.2:8476", 4, 3)
    with pytest.raises(ValueError, match="ROTAX_PROCESS_ID=4 is outside 0..3"):
        distributed.distributed_settings({"ROTAX_COORDINATOR_ADDRESS": "h:1",
                                          "ROTAX_NUM_PROCESSES": "4", "ROTAX_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="no ROTAX_COORDINATOR_ADDRESS"):
        distributed.distributed_settings({"ROTAX_NUM_PROCESSES": "2", "ROTAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="both ROTAX_NUM_PROCESSES and ROTAX_PROCESS_ID"):
        distributed.distributed_settings({"ROTAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="use 1 or 0"):
        distributed.distributed_settings({"ROTAX_DISTRIBUTED": "maybe"})


# ---------------------------------------------------------------- two real processes (slow-ish)


TOKENS = np.random.default_rng(0).integers(0, 90, (8, 16), dtype=np.int32)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    import rotax
    from tests.support import hf_fixtures

    path = hf_fixtures.llama(tmp_path / "llama", tied=False, layers=2)
    start = time.monotonic()
    outs = [tmp_path / f"logits{i}.npy" for i in range(NUM_PROCESSES)]
    procs = [multihost.start(["-m", "tests.runtime.test_distributed", "WORKER", str(path), str(out)], env)
             for out, env in zip(outs, multihost.distributed_envs(NUM_PROCESSES, LOCAL_DEVICES))]
    logs = multihost.wait(procs, WORKER_TIMEOUT_S)
    elapsed = time.monotonic() - start

    # one process, one device
    cfg, params = rotax.load_hf(path)
    reference = np.asarray(rotax.forward(cfg, params, TOKENS))
    for i, out in enumerate(outs):
        got = np.load(out)
        assert got.shape == reference.shape
        err = np.max(np.abs(got - reference)) / np.max(np.abs(reference))
        assert err <= 1e-5, (i, err)
    exported_cfg, exported = rotax.load_hf(tmp_path / "exported")
    np.testing.assert_array_equal(np.asarray(rotax.forward(exported_cfg, exported, TOKENS)), reference)
    assert "process 0 of 2, 8 global devices" in logs[0], logs[0]
    assert "q_proj shard (1/8)" in logs[0], logs[0]
    print(f"2-process run took {elapsed:.1f}s")


def _worker(path: str, out: str) -> None:
    from rotax.runtime.distributed import maybe_initialize

    assert maybe_initialize(), "expected the ROTAX_* variables to start jax.distributed"
    import jax
    from jax.experimental import multihost_utils

    import rotax
    from rotax.runtime.host import to_host

    assert jax.local_device_count() == LOCAL_DEVICES, jax.local_devices()
    print(f"process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.device_count()} global devices", flush=True)
    mesh = rotax.make_mesh(MESH_SHAPE)
    cfg, params = rotax.load_hf(path, mesh=mesh)
    q = params["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert not q.is_fully_addressable
    fraction = q.addressable_shards[0].data.size / q.size
    print(f"q_proj shard (1/{round(1 / fraction)}) {q.sharding.spec}", flush=True)
    with jax.set_mesh(mesh):
        logits = rotax.forward(cfg, params, TOKENS)
    print(f"logits fully addressable: {logits.is_fully_addressable}", flush=True)
    np.save(out, to_host(logits))  # all-gathered if sharded across the processes
    # export gathers each leaf on every process; only process 0 writes
    rotax.export_hf(cfg, params, Path(out).parent / "exported", source=path)
    multihost_utils.sync_global_devices("exported")
    jax.distributed.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "WORKER":
        _worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tests.runtime.test_distributed WORKER CHECKPOINT_DIR OUT.npy")
