"""Matrices of checkpoints paired for analysis, read lazily: one module's stacks at a time, so
a 7B pair (or a study's every SFT checkpoint) never sits in memory whole.

Sources are HF directories (read from safetensors one layer slice at a time) or Orbax train
checkpoints (one tensor restored at a time, straight into its sharding). Each is a
``{canonical path: lazy stack}`` dict; :func:`paired_stream` turns a reference and labelled
targets into the ``(name, ref, {label: target})`` stream that ``spectral.analyze`` consumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from rotax.analysis.selectors import is_matrix, module_type
from rotax.io.checkpoint import restore_params
from rotax.io.hf import SafetensorsReader, hf_names
from rotax.models.config import ModelConfig
from rotax.models.decoder import param_shapes
from rotax.runtime.tree_paths import Path as TreePath
from rotax.runtime.tree_paths import flatten_by_path, is_stacked


class CheckpointStack:
    """Lazy ``[L, m, n]`` float32 view of one stacked matrix of an HF checkpoint: slicing axis 0
    reads just those layers from disk."""

    def __init__(self, reader, names: list[str], shape: tuple[int, ...]):
        self.reader, self.names, self.shape = reader, names, tuple(shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("CheckpointStack supports slices of axis 0 only")
        return np.stack([self.reader.read(n, dtype=np.float32) for n in self.names[index]])


class _Eager:
    """A 2-D tensor of an HF checkpoint, read when its module's turn comes."""

    def __init__(self, reader, name, shape):
        self.reader, self.name, self.shape = reader, name, tuple(shape)

    def load(self) -> np.ndarray:
        return self.reader.read(self.name, dtype=np.float32)


class OrbaxTensor:
    """One params tensor of an Orbax train checkpoint, restored (into the sharding of
    ``abstract``) only when sliced or loaded, and not kept: a study's many checkpoints then
    cost one tensor of device memory at a time. ``subtree`` is where the canonical tree sits
    in the saved params (``("policy",)`` for PPO)."""

    def __init__(self, checkpoint_dir, path: TreePath, abstract: jax.ShapeDtypeStruct,
                 subtree: tuple[str, ...] = ()):
        self.checkpoint_dir, self.path, self.abstract = Path(checkpoint_dir), tuple(path), abstract
        self.subtree, self.shape, self.dtype = tuple(subtree), tuple(abstract.shape), abstract.dtype

    def load(self) -> jax.Array:
        return restore_params(self.checkpoint_dir, self.abstract, subtree=self.subtree + self.path)

    def __getitem__(self, index) -> jax.Array:
        return self.load()[index]


def hf_matrices(directory: Path, modules=None) -> tuple[ModelConfig, dict]:
    """``(cfg, {path: lazy stack})`` of every weight matrix of the HF checkpoint in
    ``directory`` (of the module types ``modules``, all when None). Raises ValueError naming a
    tensor that is missing or has the wrong shape."""
    cfg = ModelConfig.from_hf_dir(directory)
    reader = SafetensorsReader(directory)
    out = {}
    for path, leaf in flatten_by_path(param_shapes(cfg)).items():
        if not is_matrix(path, len(leaf.shape)) or (modules is not None and module_type(path) not in modules):
            continue
        per_tensor = leaf.shape[1:] if is_stacked(path) else leaf.shape
        names = hf_names(cfg, path)
        for name in names:
            if name not in reader.file_of:
                raise ValueError(f"{reader.directory}: tensor {name!r} is missing")
            if tuple(reader.shape(name)) != tuple(per_tensor):
                raise ValueError(f"tensor {name!r}: expected shape {tuple(per_tensor)}, "
                                 f"{reader.directory} has {tuple(reader.shape(name))}")
        out[path] = CheckpointStack(reader, names, leaf.shape) if is_stacked(path) \
            else _Eager(reader, names[0], leaf.shape)
    return cfg, out


def orbax_matrices(checkpoint_dir, abstract_params, subtree: tuple[str, ...] = ()) -> dict:
    """``{path: OrbaxTensor}`` of every weight matrix of ``abstract_params`` (the canonical
    tree's ``jax.ShapeDtypeStruct`` leaves, with shardings) in an Orbax checkpoint."""
    return {path: OrbaxTensor(checkpoint_dir, path, leaf, subtree)
            for path, leaf in flatten_by_path(abstract_params).items() if is_matrix(path, len(leaf.shape))}


def paired_stream(reference: Mapping, targets: Mapping[str, Mapping]):
    """A generator of ``(canonical dotted name, ref stack, {label: target stack})`` over the
    reference's entries (``{path: array or lazy stack}``, matrices only) (lazy 3-D stacks stay lazy; 2-D tensors are loaded at their turn).
    Raises ValueError up front naming the first tensor a target lacks or has in another shape."""
    for path, ref in reference.items():
        for label, stacks in targets.items():
            if path not in stacks:
                raise ValueError(f"target {label!r} has no tensor {'.'.join(path)!r}")
            if tuple(stacks[path].shape) != tuple(ref.shape):
                raise ValueError(f"tensor {'.'.join(path)!r}: reference shape {tuple(ref.shape)} vs "
                                 f"target {label!r} shape {tuple(stacks[path].shape)}")

    def load(stack):  # in-memory leaves pass through
        return stack.load() if len(stack.shape) == 2 and hasattr(stack, "load") else stack

    def stream():
        for path, ref in reference.items():
            yield ".".join(path), load(ref), {label: load(stacks[path]) for label, stacks in targets.items()}

    return stream()


def checkpoint_pairs(reference: Path, targets: dict[str, Path], modules):
    """``(cfg, stream)`` for HF directories: the reference ModelConfig and a generator of
    ``(canonical name, ref stack, {label: target stack})`` for every matrix of the selected
    module types. Raises ValueError naming the first tensor whose shape differs."""
    cfg, ref = hf_matrices(reference, modules)
    return cfg, paired_stream(ref, {label: hf_matrices(d, modules)[1] for label, d in targets.items()})
