"""Host ⇄ device copies that are correct on one process and on many (``jax.distributed``).

* :func:`to_host` — device arrays → numpy arrays of their *global* values. ``jax.device_get``
  raises on an array sharded across processes (each process holds only its shards); such
  leaves are gathered with ``multihost_utils.process_allgather(..., tiled=True)``.
* :func:`to_global` — host numpy arrays → global ``jax.Array``s in given shardings. Every
  process holds the same host value and places only its own slices
  (``jax.make_array_from_callback``): no transfer between processes, no equality check.
* :func:`check_same_on_every_process` — that equality check, on a fingerprint: processes whose
  host data differ (another data file, seed or tokenizer) would otherwise train on a silent
  mixture of rows.
* :func:`barrier` — every process waits here (after process 0 changed shared files).

Both are SPMD calls: when any leaf spans several processes every process must make the same
call with the same tree structure (like calling a jitted function). On one process they are
``jax.device_get`` / ``jax.device_put``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def spans_processes(x) -> bool:
    """True for a ``jax.Array`` whose value no single process holds (sharded across processes)."""
    return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated


def to_host(tree: Any) -> Any:
    """The same tree with every leaf a numpy array of its global value.

    Fully addressable and fully replicated leaves are fetched with one ``jax.device_get``
    (no communication); leaves sharded across processes are all-gathered (a collective: every
    process must call this with the same tree). Python scalars become 0-d arrays."""
    leaves, treedef = jax.tree.flatten(tree)
    sharded = [i for i, x in enumerate(leaves) if spans_processes(x)]
    out = list(jax.device_get([x if i not in sharded else None for i, x in enumerate(leaves)]))
    if sharded:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([leaves[i] for i in sharded], tiled=True)
        for i, value in zip(sharded, gathered):
            out[i] = value
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in out])


def to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same value on every process) → ``jax.Array``s in ``shardings`` (a
    matching tree of ``Sharding``, or one sharding for every leaf).

    A sharding local to this process gets ``jax.device_put``; one spanning processes gets
    ``jax.make_array_from_callback``, each process copying only the slices of its own
    devices."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def place(x, sharding):
        if sharding.is_fully_addressable or isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree, shardings)


def fingerprint(tree: Any) -> np.ndarray:
    """A 128-bit digest (4 × uint32) of a tree of host arrays: structure, shapes, dtypes, bytes."""
    leaves, treedef = jax.tree.flatten(tree)
    digest = hashlib.blake2b(str(treedef).encode(), digest_size=16)
    for leaf in leaves:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return np.frombuffer(digest.digest(), np.uint32).copy()


def check_same_on_every_process(tree: Any, what: str) -> None:
    """Raises ``ValueError`` naming ``what`` and the disagreeing processes unless every process
    holds the same host ``tree``. A collective on several processes (all must call it); free on
    one."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digests = np.asarray(multihost_utils.process_allgather(fingerprint(tree)))  # [processes, 4]
    differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if differ:
        raise ValueError(
            f"{what} differs between processes: process(es) {differ} hold other values than "
            f"process 0 (every process must build the same host data: same data files, seeds, "
            f"tokenizer and config)")


def barrier(name: str) -> None:
    """Every process waits until all reach ``barrier(name)`` (the same name on each); free on
    one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
