"""Launching a multi-host JAX job on this machine: N processes × M CPU devices on localhost.

:func:`launch` starts ``python <args...>`` once per process with the ``ROTAX_*`` variables
:func:`rotax.runtime.distributed.maybe_initialize` reads (a free localhost port as the coordinator) and
``--xla_force_host_platform_device_count=M``, waits for all of them and returns their combined
stdout+stderr, or fails the test with every process's output. :func:`start` and :func:`wait`
run other processes beside such a job (e.g. a single-process reference, concurrently).
Comparing such runs: :func:`metric_rows`, :func:`relative_error`; a worker ends with
:func:`end_worker`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_VARIABLES = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "ROTAX_DISTRIBUTED",
                     "ROTAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS", "ROTAX_NUM_PROCESSES",
                     "ROTAX_PROCESS_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_env(local_devices: int, xla_flags: str = "", **extra: str) -> dict:
    """The environment of a CPU JAX process with ``local_devices`` devices and no cluster
    variables (so a single process stays single)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{xla_flags} --xla_force_host_platform_device_count={local_devices}".strip(),
               **extra)
    for name in CLUSTER_VARIABLES:
        if name not in extra:
            env.pop(name, None)
    return env


def distributed_envs(num_processes: int, local_devices: int, xla_flags: str = "") -> list[dict]:
    """One environment per process of a ``jax.distributed`` job on localhost (process ``i``
    gets ``ROTAX_PROCESS_ID=i``; a free port for the coordinator)."""
    env = cpu_env(local_devices, xla_flags, ROTAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}",
                  ROTAX_NUM_PROCESSES=str(num_processes))
    return [dict(env, ROTAX_PROCESS_ID=str(i)) for i in range(num_processes)]


def start(args: Sequence[str], env: dict) -> subprocess.Popen:
    """Starts ``python <args>`` in the repository root (stdout and stderr combined)."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait(procs: Sequence[subprocess.Popen], timeout: float) -> list[str]:
    """Each process's output once all have exited; a test failure with every output if one
    fails or they take longer than ``timeout`` seconds together."""
    logs = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            partial = [p.communicate()[0] for p in procs]
            pytest.fail(f"processes did not finish in {timeout}s; output:\n" + "\n---\n".join(partial))
    if any(p.returncode != 0 for p in procs):
        pytest.fail("\n".join(f"--- process {i} (exit {p.returncode}):\n{log}"
                              for i, (p, log) in enumerate(zip(procs, logs))))
    return logs


def launch(args: Sequence[str], *, num_processes: int = 2, local_devices: int = 4,
           xla_flags: str = "", timeout: float = 240) -> list[str]:
    """Runs ``python <args>`` as ``num_processes`` processes of one ``jax.distributed`` job;
    returns each process's output, in order."""
    return wait([start(args, env) for env in distributed_envs(num_processes, local_devices, xla_flags)],
                timeout)


def run_with_reference(args: Sequence[str], run_dirs: tuple[Path, Path], *, xla_flags: str = "",
                       timeout: float = 400, num_processes: int = 2,
                       local_devices: int = 4) -> tuple[str, list[str]]:
    """Runs ``python <args> RUN_DIR`` as a ``num_processes``-process job (``run_dirs[0]``) and,
    beside it, as one process with all the devices (``run_dirs[1]``: the reference; on 2 cores
    running both at once takes less wall time). Each worker prints ``process I of N: L local / G
    global devices`` first, which is checked. Returns (reference output, [job outputs])."""
    devices = num_processes * local_devices
    procs = [start([*args, str(run_dirs[1])], cpu_env(devices, xla_flags))]
    procs += [start([*args, str(run_dirs[0])], env)
              for env in distributed_envs(num_processes, local_devices, xla_flags)]
    single, *logs = wait(procs, timeout)
    for i, log in enumerate(logs):
        assert f"process {i} of {num_processes}: {local_devices} local / {devices} global devices" in log, log
    assert f"process 0 of 1: {devices} local / {devices} global devices" in single, single
    return single, logs


TIMING_SUFFIXES = ("_seconds", "tokens_per_second")


def metric_rows(run_dir: Path, stage: str | None = None) -> dict:
    """``{(step, "group/name"): value}`` of every non-timing metric of ``run_dir/metrics.jsonl``,
    each of which must be logged once (rows of ``stage`` only, when given)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert stage is None or row["stage"] == stage, row
        for key, value in row.items():
            if "/" in key and not key.endswith(TIMING_SUFFIXES):
                assert (row["step"], key) not in out, f"{key} at step {row['step']} logged twice"
                out[(row["step"], key)] = value
    return out


def relative_error(a, b) -> float:
    """max |a - b| / max |b| (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def end_worker() -> None:
    """The last call of a worker: on several processes, wait for all, then leave the job."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("worker done")
        jax.distributed.shutdown()
