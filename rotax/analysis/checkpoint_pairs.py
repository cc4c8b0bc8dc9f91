"""Matrices of HF checkpoints paired for analysis, read lazily: one module's stacks at a time,
one layer slice at a time, so a 7B pair never sits in memory whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rotax.analysis.selectors import is_matrix, module_type
from rotax.io.hf import SafetensorsReader, hf_names
from rotax.models.config import ModelConfig
from rotax.models.decoder import param_shapes
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


def checkpoint_pairs(reference: Path, targets: dict[str, Path], modules):
    """``(cfg, stream)``: the reference ModelConfig and a generator of ``(canonical name,
    ref stack, {label: target stack})`` for every matrix of the selected module types. Raises
    ValueError naming the first tensor whose shape differs between checkpoints."""
    cfg = ModelConfig.from_hf_dir(reference)
    readers = {"__ref__": SafetensorsReader(reference)}
    configs = {"__ref__": cfg}
    for label, directory in targets.items():
        readers[label] = SafetensorsReader(directory)
        configs[label] = ModelConfig.from_hf_dir(directory)
    plan = []
    for path, leaf in flatten_by_path(param_shapes(cfg)).items():
        if not is_matrix(path, len(leaf.shape)) or module_type(path) not in modules:
            continue
        per_tensor = leaf.shape[1:] if is_stacked(path) else leaf.shape
        stacks = {}
        for label, reader in readers.items():
            names = hf_names(configs[label], path)
            for name in names:
                if name not in reader.file_of:
                    raise ValueError(f"{reader.directory}: tensor {name!r} is missing")
                if tuple(reader.shape(name)) != tuple(per_tensor):
                    raise ValueError(f"tensor {name!r}: reference shape {tuple(per_tensor)} vs "
                                     f"{reader.directory} shape {tuple(reader.shape(name))}")
            stacks[label] = CheckpointStack(reader, names, leaf.shape) if is_stacked(path) \
                else _Eager(reader, names[0], leaf.shape)
        plan.append((".".join(path), stacks.pop("__ref__"), stacks))

    def stream():
        for name, ref, tgts in plan:
            yield name, (ref.load() if isinstance(ref, _Eager) else ref), \
                {label: (t.load() if isinstance(t, _Eager) else t) for label, t in tgts.items()}

    return cfg, stream()


class _Eager:
    """A 2-D tensor read when its module's turn comes."""

    def __init__(self, reader, name, shape):
        self.reader, self.name, self.shape = reader, name, tuple(shape)

    def load(self) -> np.ndarray:
        return self.reader.read(self.name, dtype=np.float32)
