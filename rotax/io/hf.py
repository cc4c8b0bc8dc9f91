"""HF ⇄ rotax: the name map, a streamed safetensors load into shardings, and export.

Loading never builds a torch model and never holds the checkpoint twice: every leaf is created
with ``jax.make_array_from_callback``, whose callback reads just the slice one device needs from
the memory-mapped safetensors file(s), layer by layer.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rotax.models.config import ModelConfig
from rotax.models.decoder import param_shapes
from rotax.runtime import sharding as sharding_lib
from rotax.runtime.host import to_host
from rotax.runtime.tree_paths import is_stacked, path_keys

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json",
                   "chat_template.jinja", "chat_template.json", "added_tokens.json",
                   "preprocessor_config.json")


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message names the tensor."""


# ---------------------------------------------------------------- name map


def hf_names(cfg: ModelConfig, path: tuple[str, ...]) -> list[str]:
    """HF tensor names of canonical leaf ``path``: one name, or one per stacked layer."""
    prefix = cfg.hf_prefix
    if is_stacked(path):
        rest = ".".join(path[2:])
        return [f"{prefix}model.layers.{i}.{rest}" for i in cfg.layer_ids]
    return [prefix + ".".join(path)]


# ---------------------------------------------------------------- reading


class SafetensorsReader:
    """Index over a checkpoint's safetensors file(s); reads tensors or slices of them.

    The format is an 8-byte header length, a JSON header (dtype, shape, byte offsets per
    tensor) and raw little-endian data. Reads go through ``np.memmap`` so a slice costs one
    copy of just that slice (``safetensors``' own numpy path cannot read bf16, and its flax
    path copies whole tensors through device buffers); each map is dropped after the read, so
    file pages do not stay charged to the process and host memory stays bounded by what the
    devices hold."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.directory / SINGLE_FILE).is_file():
            weight_map = None
        else:
            raise FileNotFoundError(f"{self.directory}: neither {SINGLE_FILE} nor {INDEX_FILE}")
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        self.file_of: dict[str, str] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str, int]] = {}  # shape, dtype, byte offset
        for name in files:
            for key, meta in _read_header(self.directory / name).items():
                self.file_of[key] = name
                self._meta[key] = meta
        if weight_map:
            missing = sorted(k for k, f in weight_map.items() if self.file_of.get(k) != f)
            if missing:
                raise CheckpointError(f"{index}: lists tensor {missing[0]!r} in {weight_map[missing[0]]}, "
                                      "which does not contain it")

    def names(self) -> list[str]:
        return list(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> str:
        return self._meta[name][1]

    def read(self, name: str, index=None, dtype=None) -> np.ndarray:
        """Tensor ``name`` (or its slice ``index``) as a host array, cast to ``dtype``."""
        shape, stored, offset = self._meta[name]
        if 0 in shape:
            return np.zeros(shape, dtype if dtype is not None else _NUMPY_DTYPES[stored])[index or ...]
        view = np.memmap(self.directory / self.file_of[name], dtype=_NUMPY_DTYPES[stored], mode="r",
                         offset=offset, shape=shape)
        part = view[index] if index is not None else view
        out = np.array(part, dtype=dtype if dtype is not None else part.dtype)
        del view, part  # unmap now
        return out

    def read_rows(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Reads rows ``start:stop`` (axis 0) of tensor ``name`` into ``out`` with plain file
        reads — no mapping, so nothing but ``out`` is charged to the process."""
        shape, stored, offset = self._meta[name]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * _NUMPY_DTYPES[stored].itemsize
        raw = out if out.dtype == _NUMPY_DTYPES[stored] else np.empty(out.shape, _NUMPY_DTYPES[stored])
        with open(self.directory / self.file_of[name], "rb") as f:
            f.seek(offset + start * row_bytes)
            if f.readinto(memoryview(raw.reshape(-1).view(np.uint8))) != (stop - start) * row_bytes:
                raise CheckpointError(f"{self.directory / self.file_of[name]}: short read of {name!r}; "
                                      "is the file truncated?")
        if raw is not out:
            out[...] = raw


_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
           "I64": "int64", "I32": "int32", "U8": "uint8", "BOOL": "bool", "I8": "int8"}
_NUMPY_DTYPES = {name: np.dtype(jnp.dtype(name)) for name in _DTYPES.values()}


def _read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """``{tensor: (shape, dtype, absolute byte offset)}`` of one safetensors file; raises
    CheckpointError for a truncated or malformed file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors header; is it truncated?")
            header_len = int.from_bytes(raw, "little")
            if header_len > min(size - 8, 100 << 20):
                raise CheckpointError(f"{path}: header length {header_len} exceeds the file; is it truncated?")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: cannot read safetensors header ({err}); is it truncated?") from err
    data_start = 8 + header_len
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        if data_start + end > size:
            raise CheckpointError(f"{path}: tensor {key!r} ends at byte {data_start + end} but the file has "
                                  f"{size} bytes; is it truncated?")
        if meta["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {meta['dtype']}")
        out[key] = (tuple(meta["shape"]), _DTYPES[meta["dtype"]], data_start + begin)
    return out


def _leaf_reader(reader: SafetensorsReader, names: list[str], stacked: bool, dtype):
    """A make_array_from_callback callback reading the slice ``index`` straight from disk."""

    def callback(index):
        if not stacked:
            return reader.read(names[0], index, dtype)
        layer_index, inner = index[0], index[1:]
        return np.stack([reader.read(n, inner, dtype) for n in names[layer_index]])

    return callback


_CHUNK_BYTES = 64 << 20


@functools.lru_cache(maxsize=None)
def _chunk_updater(target):
    # in place: the buffer is donated, so the leaf is never held twice on the device
    return jax.jit(lambda buf, chunk, start: jax.lax.dynamic_update_slice_in_dim(buf, chunk, start, 0),
                   donate_argnums=0, out_shardings=target)


def _fill_in_chunks(reader, names, stacked, shape, dtype, target) -> jax.Array:
    """Builds one leaf in its sharding from host chunks along axis 0 (a layer, or ~64 MB of
    rows), so host memory peaks at the parameters plus one chunk."""
    buf = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=target)()
    update = _chunk_updater(target)
    if stacked:
        for layer, name in enumerate(names):
            chunk = np.empty((1, *shape[1:]), dtype)
            reader.read_rows(name, 0, shape[1], chunk[0]) if len(shape) > 1 else None
            buf = update(buf, chunk, layer)
        return buf
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
    rows = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        chunk = np.empty((stop - start, *shape[1:]), dtype)
        reader.read_rows(names[0], start, stop, chunk)
        buf = update(buf, chunk, start)
    return buf


def load_hf_checkpoint(path, *, mesh=None, dtype=None, compute_dtype=None, remat=False):
    """Loads an HF directory into ``(ModelConfig, canonical params)``, each leaf directly in its
    target sharding. ``dtype`` is the parameter dtype (default: as stored); ``compute_dtype``
    defaults to it. Raises CheckpointError naming any missing or mis-shaped tensor."""
    path = Path(path)
    cfg = ModelConfig.from_hf_dir(path)
    reader = SafetensorsReader(path)
    stored = reader.dtype(hf_names(cfg, ("model", "embed_tokens", "weight"))[0]) \
        if hf_names(cfg, ("model", "embed_tokens", "weight"))[0] in reader.file_of else "float32"
    param_dtype = jnp.dtype(dtype or stored).name
    cfg = cfg.replace(param_dtype=param_dtype, dtype=jnp.dtype(compute_dtype or param_dtype).name,
                      remat=remat)
    shapes = param_shapes(cfg)
    _validate(cfg, reader, shapes)
    if mesh is None:
        if jax.process_count() > 1:
            raise ValueError("load_hf on several processes needs an explicit mesh= spanning them")
        mesh = sharding_lib.make_mesh(devices=jax.devices()[:1])
    mesh = sharding_lib.canonical_mesh(mesh)  # a jax.make_mesh mesh (Explicit axes) too
    shardings = sharding_lib.param_shardings(shapes, mesh)

    def load_leaf(path_, shape, target):
        keys = path_keys(path_)
        names = hf_names(cfg, keys)
        stacked = is_stacked(keys)
        if target.is_fully_addressable:
            return _fill_in_chunks(reader, names, stacked, shape.shape, jnp.dtype(param_dtype), target)
        # multi-host: every device reads exactly its own shard
        callback = _leaf_reader(reader, names, stacked, jnp.dtype(param_dtype))
        return jax.make_array_from_callback(shape.shape, target, callback)

    params = jax.tree_util.tree_map_with_path(load_leaf, shapes, shardings)
    return cfg, params


def _validate(cfg: ModelConfig, reader: SafetensorsReader, shapes) -> None:
    expected: dict[str, tuple[int, ...]] = {}
    for path_, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        keys = path_keys(path_)
        names = hf_names(cfg, keys)
        per_tensor = leaf.shape[1:] if is_stacked(keys) else leaf.shape
        for name in names:
            expected[name] = tuple(per_tensor)
    for name, shape in expected.items():
        if name not in reader.file_of:
            raise CheckpointError(f"{reader.directory}: tensor {name!r} is missing (expected shape {shape})")
        got = reader.shape(name)
        if got != shape:
            raise CheckpointError(f"{reader.directory}: tensor {name!r} has shape {got}, expected {shape}")
    unused = sorted(set(reader.file_of) - set(expected))
    if unused:
        carried = [n for n in unused if _carried_through(cfg, n)]
        other = [n for n in unused if not _carried_through(cfg, n)]
        if carried:
            log.info("%d tensors not used for text (cross-attention / vision); export copies them",
                     len(carried))
        if other:
            log.warning("%d unused tensors in %s, e.g. %s", len(other), reader.directory, other[:5])


def _carried_through(cfg: ModelConfig, name: str) -> bool:
    if cfg.architecture != "mllama":
        return cfg.tie_word_embeddings and name.endswith("lm_head.weight")
    return True


# ---------------------------------------------------------------- export


@dataclass
class ExportReport:
    out_dir: Path
    written: int
    copied: int
    files: list[str]


def export_hf_checkpoint(cfg: ModelConfig, params, out_dir, *, source=None,
                         max_shard_bytes: int = 4 << 30) -> ExportReport:
    """Writes an HF directory (config.json, safetensors shards + index, tokenizer files).

    Tensors are written in the source checkpoint's dtype when ``source`` is given (so untouched
    tensors come out byte-identical) and tensors the tree does not hold (Mllama's cross-attention
    layers and vision tower) are streamed from ``source`` unchanged."""
    out_dir = Path(out_dir)
    if source and Path(source).resolve() == out_dir.resolve():
        raise ValueError(f"export target {out_dir} is the source checkpoint; choose another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(out_dir.glob("*.safetensors")) + [out_dir / INDEX_FILE]:
        if stale.exists() and jax.process_index() == 0:  # old shards would mix with these
            stale.unlink()
    reader = SafetensorsReader(source) if source else None
    if cfg.architecture == "mllama" and reader is None:
        raise ValueError("exporting an Mllama model needs source= (its vision tower and "
                         "cross-attention layers are copied from there)")
    items: list[tuple[str, object]] = []  # (hf name, thunk producing a host array)
    for path_, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = path_keys(path_)
        names = hf_names(cfg, keys)
        stacked = is_stacked(keys)
        for i, name in enumerate(names):
            items.append((name, _leaf_thunk(leaf, i if stacked else None, name, reader)))
    ours = {name for name, _ in items}
    copied = 0
    if reader is not None:
        for name in reader.names():
            if name not in ours and _carried_through(cfg, name) and not (
                    cfg.tie_word_embeddings and name.endswith("lm_head.weight")):
                items.append((name, lambda n=name: reader.read(n)))
                copied += 1
    files = write_safetensors_shards(items, out_dir, max_shard_bytes)
    if jax.process_index() == 0:
        _write_config(cfg, out_dir)
    if source and jax.process_index() == 0:
        for name in TOKENIZER_FILES:
            src = Path(source) / name
            if src.is_file() and src.resolve() != (out_dir / name).resolve():
                shutil.copyfile(src, out_dir / name)
    return ExportReport(out_dir, len(items) - copied, copied, files)


def _leaf_thunk(leaf, layer, name, reader):
    def thunk():
        x = leaf if layer is None else leaf[layer]
        if reader is not None and name in reader.file_of:
            x = x.astype(reader.dtype(name))
        return to_host(x)  # collective when x spans processes: every process calls it

    return thunk


def write_safetensors_shards(items, out_dir: Path, max_shard_bytes: int) -> list[str]:
    """Writes ``(name, thunk)`` items (each thunk returns a host array) into safetensors shards
    of at most ``max_shard_bytes``, holding one shard on the host at a time; names them as
    transformers does (one ``model.safetensors``, or numbered shards plus the index). Returns
    the file names. Only process 0 writes, but every process materializes (multi-host gathers
    are collective)."""
    from safetensors.flax import save_file

    writer = jax.process_index() == 0
    files: list[str] = []
    weight_map: dict[str, str] = {}
    current: dict = {}
    size = 0

    def flush():
        name = f"part-{len(files):05d}.safetensors"
        if writer:
            save_file({k: jnp.asarray(v) for k, v in current.items()}, str(out_dir / name),
                      metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in current})

    for name, thunk in items:
        arr = thunk()
        if current and size + arr.nbytes > max_shard_bytes:
            flush()
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    flush()
    if not writer:
        return files
    if len(files) == 1:
        (out_dir / files[0]).rename(out_dir / SINGLE_FILE)
        return [SINGLE_FILE]
    renamed = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
    for old, new in renamed.items():
        (out_dir / old).rename(out_dir / new)
    index = {"metadata": {}, "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())}}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return list(renamed.values())


def _write_config(cfg: ModelConfig, out_dir: Path) -> None:
    hf = dict(cfg.hf_config or {})
    if not hf:
        raise ValueError("ModelConfig has no hf_config to export (build it with from_hf_dict)")
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2))
