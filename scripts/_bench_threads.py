"""The benchmarks' thread budget: pin the process to N cores and tell every thread pool so.

Import and call :func:`pin_threads` before numpy, jax or torch are imported: threads inherit the
CPU affinity of the thread that creates them, and XLA:CPU sizes its worker pool from the cores
it can see — with ``intra_op_parallelism_threads=1`` alone it still runs one worker per core.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads(threads: int | None = None) -> int:
    """Restricts this process to the first ``threads`` CPUs it may use (default: the
    ``BENCH_THREADS`` environment variable, else 1), sets the OpenMP/BLAS thread counts to
    ``threads`` unless already set, and adds XLA's CPU thread flags to ``XLA_FLAGS`` unless
    they are already there. Returns ``threads`` (torch still needs ``torch.set_num_threads``)."""
    if threads is None:
        threads = int(os.environ.get("BENCH_THREADS", "1"))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(threads))
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = {"--xla_cpu_multi_thread_eigen": "true" if threads > 1 else "false",
              "intra_op_parallelism_threads": str(threads)}
    extra = [f"{name}={value}" for name, value in wanted.items() if name not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    return threads
