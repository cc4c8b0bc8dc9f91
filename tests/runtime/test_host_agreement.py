"""Processes must build the same host data: :func:`rotax.runtime.host.check_same_on_every_process`.

Every process builds each batch itself and places only its own rows on its devices, so a
process reading another data file or seed would make training a silent mixture. Two
2-process jobs (``jax.distributed`` on localhost) run side by side: one where both processes
build the same batch (no error) and one where process 1 uses another seed (a ``ValueError``
naming process 1). On one process: what the fingerprint tells apart.

The worker half of this file runs as ``python -m tests.runtime.test_host_agreement WORKER SEED_MODE``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.support import multihost


def test_fingerprint_sees_values_shapes_and_dtypes():
    from rotax.runtime.host import fingerprint
    from tests.support.sft_run_check import random_batch

    batch = random_batch(3, 0)
    assert np.array_equal(fingerprint(batch), fingerprint(random_batch(3, 0)))
    assert not np.array_equal(fingerprint(batch), fingerprint(random_batch(3, 1)))
    tokens = np.arange(6, dtype=np.int32)
    variants = [tokens, tokens.reshape(2, 3), tokens.astype(np.int64), tokens + (tokens == 5)]
    digests = {fingerprint(v).tobytes() for v in variants}
    assert len(digests) == len(variants)
    # the same arrays in another structure (a dict instead of the batch's NamedTuple)
    assert not np.array_equal(fingerprint(batch), fingerprint(batch._asdict()))


def test_one_process_has_nothing_to_compare():
    from rotax.runtime.host import check_same_on_every_process

    check_same_on_every_process({"x": np.zeros(3)}, "anything")  # no error, no collective


@pytest.mark.slow
def test_processes_with_other_data_are_named():
    worker = ["-m", "tests.runtime.test_host_agreement", "WORKER"]
    procs = [multihost.start([*worker, mode], env)
             for mode in ("same", "other") for env in multihost.distributed_envs(2, 1)]
    logs = multihost.wait(procs, 180)
    for log in logs[:2]:
        assert "batches agree" in log, log
    assert "batches agree" not in logs[2] + logs[3]
    for log in logs[2:]:
        assert "SFT batch 0 (seed 7) differs between processes: process(es) [1]" in log, log


def _worker(mode: str) -> None:
    from rotax.runtime.distributed import maybe_initialize

    maybe_initialize()
    import jax

    from rotax.runtime.host import check_same_on_every_process
    from rotax.sft.step import prepare_batch
    from tests.support.sft_run_check import random_batch

    seed = 7 if mode == "same" or jax.process_index() == 0 else 8
    batch = prepare_batch(random_batch(seed, 0))
    try:
        check_same_on_every_process(batch, "SFT batch 0 (seed 7)")
        print("batches agree", flush=True)
    except ValueError as error:
        print(error, flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "WORKER":
        _worker(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.runtime.test_host_agreement WORKER same|other")
