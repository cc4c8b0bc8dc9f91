"""Multi-host start-up: call :func:`maybe_initialize` once, before any JAX computation.

On one host nothing happens. On a Cloud TPU slice with several hosts, a SLURM job with several
tasks, an Open MPI job, or when asked explicitly, it calls ``jax.distributed.initialize()`` so
that ``jax.devices()`` lists every device of every process and one mesh spans them all.

Environment (read by :func:`distributed_settings`):

``ROTAX_DISTRIBUTED``
    ``1`` forces initialization (JAX then detects the cluster: Cloud TPU metadata, SLURM, Open
    MPI, or the explicit variables below); ``0`` disables it; unset means "detect".
``ROTAX_COORDINATOR_ADDRESS`` (or JAX's own ``JAX_COORDINATOR_ADDRESS``), ``ROTAX_NUM_PROCESSES``,
``ROTAX_PROCESS_ID``
    Explicit settings for clusters JAX cannot detect (and for tests on one machine); giving all
    three implies ``ROTAX_DISTRIBUTED=1``.

Detection without ``ROTAX_DISTRIBUTED``: SLURM with more than one task (``SLURM_NTASKS`` or
``SLURM_NPROCS`` > 1 and ``SLURM_JOB_ID`` set), Open MPI with ``OMPI_COMM_WORLD_SIZE`` > 1, or a
TPU pod whose ``TPU_WORKER_HOSTNAMES`` lists more than one host. A Cloud TPU VM started with
``gcloud ... ssh --worker=all`` does not always export ``TPU_WORKER_HOSTNAMES``; the launch script
(``scripts/launch_tpu.sh``) therefore sets ``ROTAX_DISTRIBUTED=1``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class DistributedSettings:
    """What to pass to ``jax.distributed.initialize``; ``None`` fields are auto-detected by JAX.
    ``reason`` says which environment variable triggered initialization."""

    reason: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def distributed_settings(env: Mapping[str, str] | None = None) -> DistributedSettings | None:
    """The initialization this environment asks for, or ``None`` for a single-process run.

    Pure function of ``env`` (default ``os.environ``). Raises ValueError for a malformed
    ``ROTAX_DISTRIBUTED`` or a partial set of explicit variables."""
    env = os.environ if env is None else env
    flag = env.get("ROTAX_DISTRIBUTED", "").strip().lower()
    if flag and flag not in _TRUE + _FALSE:
        raise ValueError(f"ROTAX_DISTRIBUTED={env['ROTAX_DISTRIBUTED']!r}: use 1 or 0")
    if flag in _FALSE:
        return None
    address = env.get("ROTAX_COORDINATOR_ADDRESS") or env.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _int(env, "ROTAX_NUM_PROCESSES")
    process_id = _int(env, "ROTAX_PROCESS_ID")
    explicit = (num_processes, process_id)
    if any(v is not None for v in explicit) and None in explicit:
        raise ValueError("set both ROTAX_NUM_PROCESSES and ROTAX_PROCESS_ID (and a coordinator "
                         "address), or neither")
    if num_processes is not None:
        if address is None:
            raise ValueError("ROTAX_NUM_PROCESSES is set but no ROTAX_COORDINATOR_ADDRESS "
                             "(host:port of process 0)")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"ROTAX_PROCESS_ID={process_id} is outside 0..{num_processes - 1}")
        if num_processes == 1 and flag not in _TRUE:
            return None
        return DistributedSettings("ROTAX_NUM_PROCESSES", address, num_processes, process_id)
    if flag in _TRUE:
        return DistributedSettings("ROTAX_DISTRIBUTED", address)
    slurm_tasks = _int(env, "SLURM_NTASKS") or _int(env, "SLURM_NPROCS") or 1
    if "SLURM_JOB_ID" in env and slurm_tasks > 1:
        return DistributedSettings("SLURM_NTASKS", address)
    if (_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return DistributedSettings("OMPI_COMM_WORLD_SIZE", address)
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return DistributedSettings("TPU_WORKER_HOSTNAMES", address)
    return None


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
    """Calls ``jax.distributed.initialize`` when the environment indicates several processes
    (see :func:`distributed_settings`); returns True when the distributed system is up.

    Idempotent. Must run before the first JAX computation or ``jax.devices()`` call — the CLI
    calls it before dispatching a subcommand."""
    import jax

    if jax.distributed.is_initialized():
        return True
    settings = distributed_settings(env)
    if settings is None:
        return False
    log.info("initializing jax.distributed (%s): coordinator=%s processes=%s id=%s",
             settings.reason, settings.coordinator_address or "auto",
             settings.num_processes or "auto", settings.process_id if settings.process_id is not None else "auto")
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id)
    log.info("process %d of %d; %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
