"""Orbax checkpoints of train states, per run and stage, plus JSON run metadata.

Layout of a run directory::

    runs/<name>/checkpoints/<stage>/<step>/state/       the TrainState (orbax, sharded arrays)
                                          /metadata/    JSON: step, data position, config,
                                                        metrics, model config, source HF dir
                                          /rotax_manifest.json   size of every file
    runs/<name>/run_metadata.json                      run-level facts (e.g. "sft_max_ood")

Writes are atomic: orbax writes into a temporary directory and renames it when complete, so a
killed run never leaves a step directory that looks finished. Once a checkpoint is final its
file sizes go into ``rotax_manifest.json``; restoring verifies them (a truncated file is
detected, warned about and the previous checkpoint used) and then restores (an unreadable
checkpoint is skipped the same way). A resumed run moves the skipped newer checkpoints to
``checkpoints/<stage>.set-aside/`` so it can save those steps again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from rotax.runtime.host import barrier
from rotax.runtime.run_config import unique_path, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "rotax_manifest.json"
RUN_METADATA = "run_metadata.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose files do not match its manifest or cannot be restored."""


def stage_directory(run_dir, stage: str) -> Path:
    """``<run_dir>/checkpoints/<stage>``."""
    return Path(run_dir).absolute() / "checkpoints" / stage


class CheckpointStore:
    """Saves and restores one stage's train states (``stage`` is ``"sft"``, ``"ppo"``, ...).

    ``keep``: how many newest checkpoints to keep (None: all — the study evaluates many).
    ``async_save``: write in the background (orbax copies device arrays to host before
    ``save`` returns, so donating the state afterwards is safe).
    """

    def __init__(self, run_dir, stage: str, *, keep: int | None = None, async_save: bool = True):
        self.directory = stage_directory(run_dir, stage)
        self.stage = stage
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._unmanifested: list[int] = []

    # ------------------------------------------------------------ saving

    def save(self, step: int, state, metadata: dict[str, Any]) -> Path:
        """Starts saving ``state`` (a pytree of jax arrays) and ``metadata`` (JSON-able) as
        ``<stage>/<step>``; returns that path. Earlier saves are finished first."""
        self._finish_pending()
        metadata = dict(metadata, step=int(step), stage=self.stage)
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)), force=True)
        self._unmanifested.append(int(step))
        return self.directory / str(step)

    def wait(self) -> None:
        """Blocks until every started save is on disk (and has its manifest)."""
        self._finish_pending()

    def close(self) -> None:
        self._finish_pending()
        self._manager.close()

    def _finish_pending(self) -> None:
        """Waits for started saves and writes their manifests. On several processes (each
        calls this at the same points) process 0 writes, after orbax has finalized the
        directory, and the others wait for it, so every process then sees the same files."""
        self._manager.wait_until_finished()
        if not self._unmanifested:
            return
        if jax.process_index() == 0:
            for step in self._unmanifested:
                path = self.directory / str(step)
                if path.is_dir():
                    write_manifest(path)
        barrier(f"rotax manifest {self.stage} {self._unmanifested}")
        self._unmanifested = []

    # ------------------------------------------------------------ restoring

    def steps(self) -> list[int]:
        """Finished checkpoint steps, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """``(state, metadata)`` of checkpoint ``step``, each array placed in the sharding of
        its ``jax.ShapeDtypeStruct`` in ``abstract_state`` (any mesh). Raises
        CorruptCheckpointError when files are missing, truncated or unreadable."""
        verify_manifest(self.path(step))
        try:
            restored = self._manager.restore(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()))
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            raise CorruptCheckpointError(f"{self.path(step)}: cannot restore ({type(err).__name__}: "
                                         f"{str(err)[:300]})") from err
        return restored.state, dict(restored.metadata)

    def restore_latest(self, abstract_state) -> tuple[int, Any, dict] | None:
        """``(step, state, metadata)`` of the newest checkpoint that verifies and restores;
        damaged ones are skipped with a warning. None when there is no usable checkpoint.
        On several processes a step is used only if its manifest verifies on every process,
        so all of them restore the same step (restoring is collective)."""
        for step in reversed(self.steps()):
            if not _on_every_process(self._verifies(step)):
                continue
            try:
                state, metadata = self.restore(step, abstract_state)
            except CorruptCheckpointError as err:
                self._skip(step, err)
                continue
            return step, state, metadata
        return None

    def _verifies(self, step: int) -> bool:
        try:
            verify_manifest(self.path(step))
        except CorruptCheckpointError as err:
            self._skip(step, err)
            return False
        return True

    def _skip(self, step: int, err: Exception) -> None:
        log.warning("skipping damaged checkpoint %s: %s", self.path(step), err)
        print(f"warning: skipping damaged checkpoint {self.path(step)}: {err}", flush=True)

    def resume(self, abstract_state, *, resume: bool, unit: str = "step",
               other_run: str = "choose another run_dir") -> tuple[int, Any, dict]:
        """``(start, state, metadata)`` for a training loop: the newest usable checkpoint, or
        ``(0, None, {})`` when there is none (damaged ones are skipped with a warning). Raises
        ValueError when checkpoints exist but ``resume`` is false (``other_run`` says what else
        to do), or when a checkpoint's ``state.step`` is not its ``unit`` number."""
        if not self.steps():
            return 0, None, {}
        if not resume:
            raise ValueError(f"{self.directory} already holds checkpoints {self.steps()}; pass "
                             f"--resume to continue, or {other_run}")
        restored = self.restore_latest(abstract_state)
        # the skipped newer steps (damaged, or killed before their manifest was written) would
        # block saving those steps again: moved aside, not deleted
        self._set_aside([s for s in self.steps() if restored is None or s > restored[0]])
        if restored is None:
            log.warning("no usable checkpoint in %s; starting from %s 0", self.directory, unit)
            return 0, None, {}
        start, state, metadata = restored
        if int(state.step) != start:
            raise ValueError(f"checkpoint {start} holds state.step={int(state.step)}")
        return start, state, metadata


    def set_aside_directory(self) -> Path:
        """Where unusable checkpoints go: ``<run_dir>/checkpoints/<stage>.set-aside/``."""
        return self.directory.with_name(f"{self.stage}.set-aside")

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                dest = unique_path(self.set_aside_directory() / str(step))
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.path(step).rename(dest)
                log.warning("moved unusable checkpoint %s to %s", self.path(step), dest)
        barrier(f"rotax set aside {self.stage} {steps}")
        self._manager.reload()


def _on_every_process(flag: bool) -> bool:
    """``flag`` and-ed over all processes (a collective when there are several)."""
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


# ---------------------------------------------------------------- manifests


def _files(directory: Path) -> dict[str, int]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            full = Path(root) / name
            rel = full.relative_to(directory).as_posix()
            if rel != MANIFEST and not name.startswith(f".{MANIFEST}.tmp-"):
                out[rel] = full.stat().st_size
    return out


def write_manifest(checkpoint_dir) -> None:
    """Records the size of every file of a finished checkpoint in ``rotax_manifest.json``."""
    checkpoint_dir = Path(checkpoint_dir)
    write_text_atomic(checkpoint_dir / MANIFEST,
                      json.dumps({"files": _files(checkpoint_dir)}, indent=1, sort_keys=True))


def verify_manifest(checkpoint_dir) -> None:
    """Raises CorruptCheckpointError if a file listed in the manifest is missing or has another
    size. A checkpoint without a manifest (the run died right after orbax finished it) is
    accepted; restoring it is the remaining check."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = checkpoint_dir / MANIFEST
    if not manifest.is_file():
        log.info("%s has no %s; relying on restore to validate it", checkpoint_dir, MANIFEST)
        return
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CorruptCheckpointError(f"{manifest}: unreadable ({err})") from err
    found = _files(checkpoint_dir)
    for rel, size in expected.items():
        if rel not in found:
            raise CorruptCheckpointError(f"{checkpoint_dir}: file {rel} is missing")
        if found[rel] != size:
            raise CorruptCheckpointError(f"{checkpoint_dir}: file {rel} has {found[rel]} bytes, "
                                         f"expected {size} (truncated or overwritten)")


# ---------------------------------------------------------------- reading single checkpoints


def read_metadata(checkpoint_dir) -> dict:
    """The JSON metadata of one checkpoint directory (``.../<stage>/<step>``)."""
    path = Path(checkpoint_dir) / "metadata" / "metadata"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: not a rotax checkpoint (no metadata/metadata)")
    return json.loads(path.read_text())


def restore_params(checkpoint_dir, abstract_params, *, subtree: tuple[str, ...] = ()) -> Any:
    """Only the ``params`` of a checkpoint's train state (no optimizer state is read), each
    leaf in the sharding of its ``jax.ShapeDtypeStruct`` in ``abstract_params``.

    ``subtree``: where ``abstract_params`` sits inside the saved params — ``("policy",)`` for
    a PPO state's policy, or a longer path down to one leaf (then only that tensor is read)."""
    checkpoint_dir = Path(checkpoint_dir).absolute()
    verify_manifest(checkpoint_dir)
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype),
                                abstract_params)
    item, args = abstract_params, restore_args
    for key in reversed(subtree):
        item, args = {key: item}, {key: args}
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(checkpoint_dir / "state", args=ocp.args.PyTreeRestore(
            item={"params": item}, restore_args={"params": args}, partial_restore=True))
    out = tree["params"]
    for key in subtree:
        out = out[key]
    return out


def model_subtree(checkpoint_dir) -> tuple[str, ...]:
    """Where the model's params sit in a checkpoint's saved ``params``: ``("policy",)`` in a
    PPO state (beside its value head), ``()`` in an SFT or pre-training state. Reads the tree
    metadata only."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        meta = checkpointer.metadata(Path(checkpoint_dir).absolute() / "state")
    tree = getattr(meta, "item_metadata", meta)
    return ("policy",) if "policy" in tree["params"] else ()


def restore_model_params(checkpoint_dir, abstract_params) -> Any:
    """The model params of any rotax training checkpoint (SFT, pre-training or a PPO policy)."""
    return restore_params(checkpoint_dir, abstract_params, subtree=model_subtree(checkpoint_dir))


def latest_checkpoint(run_dir, stage: str) -> Path:
    """The newest finished checkpoint directory of ``stage`` in ``run_dir`` (read-only: nothing
    is created). Raises FileNotFoundError when there is none."""
    directory = stage_directory(run_dir, stage)
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"{directory}: no finished {stage} checkpoint")
    return directory / str(steps[-1])


# ---------------------------------------------------------------- run metadata


def read_run_metadata(run_dir) -> dict:
    """``<run_dir>/run_metadata.json`` as a dict (empty when absent)."""
    path = Path(run_dir) / RUN_METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


def update_run_metadata(run_dir, **fields) -> dict:
    """Merges ``fields`` into ``run_metadata.json`` (atomic rewrite; process 0 only)."""
    data = read_run_metadata(run_dir)
    data.update(fields)
    if jax.process_index() == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(run_dir) / RUN_METADATA, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data
