"""Spectral analysis of target checkpoint(s) against a reference, one module stack at a time.

``analyze(reference, target)`` walks every weight matrix of the canonical tree (stacked
``[L, out, in]`` per-layer matrices are mapped over axis 0 inside one jit; ``embed_tokens`` / ``lm_head`` are
``[V, H]``; 1-D tensors and stacked norms ``[L, H]`` are skipped), factorizes each matrix once
(thin SVD; the reference factors are shared by all targets and by the null control) and returns
a tidy table — one row per (target, tensor, HF layer) — plus per-index arrays for plots.

Inputs may be trees, or a stream of ``(name, ref_stack, tgt_stack)`` (``tgt_stack`` may be a
``{label: stack}`` dict) with canonical dotted names (``"model.layers.mlp.down_proj.weight"``),
so a 7B pair can be analysed from disk one module at a time; only one module's layer stack
(in chunks of ``max_chunk_bytes``) lives on the device at once.

Null control: for each matrix and seed, ``W_r + E`` with isotropic Gaussian ``E`` of the same
Frobenius norm as ``ΔW`` (key = ``null_key(key, tensor, layer, seed)``); the same statistics
appear as ``null_<metric>`` (mean over seeds) beside each metric.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rotax.runtime.host import to_host
from rotax.runtime.tree_paths import flatten_by_path, is_stacked
from rotax.analysis.checkpoint_pairs import paired_stream
from rotax.analysis.selectors import is_matrix, module_type
from rotax.analysis.subspace import (band_edges, compare, factorize, map_layers,
                            matched_norm_perturbation, resolve_rank)

ID_COLUMNS = ("target", "tensor", "layer", "module", "rows", "cols", "k", "forced_zero_u",
              "forced_zero_v")


@dataclasses.dataclass
class SpectralResult:
    """``rows``: list of dicts (``ID_COLUMNS`` + metrics + ``null_<metric>``);
    ``arrays``: ``{"<target>/<tensor>/<name>": np.ndarray}`` with ``sigma_ref``, ``sigma_tgt``
    ``[r]``, ``angles_u``, ``angles_v`` ``[k]`` (radians) and, with a null control, the first
    seed's ``sigma_null``, ``angles_u_null``, ``angles_v_null``."""

    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]

    @property
    def metric_names(self) -> list[str]:
        return [c for c in (self.rows[0] if self.rows else {}) if c not in ID_COLUMNS
                and not c.startswith("null_")]

    def write_csv(self, path) -> None:
        columns = list(self.rows[0]) if self.rows else list(ID_COLUMNS)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def save_npz(self, path) -> None:
        np.savez_compressed(path, **self.arrays)

    def extend(self, other: "SpectralResult") -> None:
        self.rows.extend(other.rows)
        self.arrays.update(other.arrays)


def null_key(key: jax.Array, tensor: str, layer: int | None, seed: int) -> jax.Array:
    """Key of the null perturbation of canonical ``tensor`` at HF ``layer`` (None for 2-D)."""
    key = jax.random.fold_in(key, zlib.crc32(tensor.encode()) & 0x7FFFFFFF)
    key = jax.random.fold_in(key, 0 if layer is None else int(layer) + 1)
    return jax.random.fold_in(key, seed)


def matrix_pairs(reference, targets) -> Iterator[tuple[str, Any, Any]]:
    """``(canonical dotted name, ref leaf, target leaf or {label: leaf})`` for every weight
    matrix. Raises ValueError naming the first tensor whose presence or shape differs."""
    many = isinstance(targets, Mapping) and "model" not in targets
    labelled = dict(targets) if many else {"target": targets}
    ref = {p: x for p, x in flatten_by_path(reference).items() if is_matrix(p, len(x.shape))}
    stream = paired_stream(ref, {label: flatten_by_path(tree) for label, tree in labelled.items()})
    for name, ref_leaf, leaves in stream:
        yield name, ref_leaf, (leaves if many else leaves["target"])


def analyze(reference, targets=None, *, k: int | float = 0.2,
            bands: tuple[float, float] = (0.2, 0.2), null_seeds: int = 2,
            key: jax.Array | None = None, layer_ids: Sequence[int] | None = None,
            dtype: str = "float32", max_chunk_bytes: int = 1 << 30,
            progress: bool = False) -> SpectralResult:
    """Spectral comparison of ``targets`` against ``reference``.

    ``reference``/``targets``: canonical trees (``targets`` may be ``{label: tree}``), or
    ``reference`` is an iterable of ``(name, ref_stack, tgt_stack | {label: stack})`` and
    ``targets`` is None. ``k``: top-subspace rank (int) or fraction of ``min(m, n)`` (float;
    default 0.2 ≤ 1/2, so no angle is forced to 0). ``bands``: head/tail fractions of the
    spectrum. ``null_seeds``: matched-norm null draws per matrix (0 = none), from ``key``
    (default ``jax.random.key(0)``). ``layer_ids[i]``: HF number of stacked layer ``i``.
    ``dtype``: ``"float32"`` or ``"float64"`` (enables jax x64 for the call)."""
    # Trees are checked up front (cheap), so a mismatch fails before any SVD runs.
    stream = reference if targets is None else list(matrix_pairs(reference, targets))
    key = jax.random.key(0) if key is None else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a legacy uint32 PRNGKey
    result = SpectralResult([], {})
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype {dtype!r}: use 'float32' or 'float64'")
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, desc="spectral", unit="module")
    if bands[0] + bands[1] > 1:
        raise ValueError(f"bands {bands}: head + tail fractions exceed 1")
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with x64, jax.default_matmul_precision("highest"):
        for name, ref_stack, tgt in stream:
            tgt = tgt if isinstance(tgt, Mapping) else {"target": tgt}
            result.extend(analyze_module(name, ref_stack, tgt, k=k, bands=bands,
                                         null_seeds=null_seeds, key=key, layer_ids=layer_ids,
                                         dtype=dtype, max_chunk_bytes=max_chunk_bytes))
    return result


def analyze_module(name: str, ref_stack, targets: Mapping[str, Any], *, k, bands, null_seeds,
                   key, layer_ids, dtype, max_chunk_bytes) -> SpectralResult:
    """Rows and arrays for one module: ``ref_stack`` ``[L, m, n]`` (or ``[m, n]``) against each
    ``targets[label]`` of the same shape."""
    path = tuple(name.split("."))
    stacked = is_stacked(path) and len(ref_stack.shape) == 3
    num, m, n = (ref_stack.shape if stacked else (1, *ref_stack.shape))
    ids = tuple(layer_ids) if (stacked and layer_ids is not None) else tuple(range(num))
    if stacked and len(ids) != num:
        raise ValueError(f"{name}: layer_ids has {len(ids)} entries for {num} stacked layers")
    r = min(m, n)
    rank = resolve_rank(k, r)
    if rank < 1:
        raise ValueError(f"{name}: k={k!r} gives rank 0 for min(m, n) = {r}")
    edges = band_edges(r, bands)
    itemsize = 8 if dtype == "float64" else 4
    per_layer = itemsize * m * n * (8 + 4 * null_seeds)
    chunk = int(max(1, min(num, max_chunk_bytes // per_layer)))
    result = SpectralResult([], {})
    for start in range(0, num, chunk):
        stop = min(num, start + chunk)
        ref = _device(ref_stack, stacked, start, stop, dtype)
        ref_factors = _factorize_stack(ref)
        layers = [ids[i] if stacked else None for i in range(start, stop)]
        keys = _null_keys(key, name, layers, null_seeds)
        for label, tgt_stack in targets.items():
            tgt = _device(tgt_stack, stacked, start, stop, dtype)
            scalars, arrays, null_scalars, null_arrays = to_host(
                _compare_stack(ref, ref_factors, tgt, keys, k=rank, bands=edges))
            for i, layer in enumerate(layers):
                tensor = _tensor_name(path, layer)
                row = {"target": label, "tensor": tensor, "layer": layer,
                       "module": module_type(path) or "other", "rows": m, "cols": n, "k": rank,
                       "forced_zero_u": max(0, 2 * rank - m), "forced_zero_v": max(0, 2 * rank - n)}
                row.update({key_: float(v[i]) for key_, v in scalars.items()})
                if null_seeds:
                    row.update({f"null_{key_}": float(np.mean(v[i])) for key_, v in null_scalars.items()
                                if key_ not in ("delta_norm", "rel_delta_norm")})
                result.rows.append(row)
                prefix = f"{label}/{tensor}/"
                for key_, v in arrays.items():
                    result.arrays[prefix + key_] = np.asarray(v[i])
                if null_seeds:
                    result.arrays[prefix + "sigma_null"] = np.asarray(null_arrays["sigma_tgt"][i, 0])
                    for side in ("u", "v"):
                        result.arrays[prefix + f"angles_{side}_null"] = np.asarray(
                            null_arrays[f"angles_{side}"][i, 0])
    return result


def _tensor_name(path: tuple[str, ...], layer: int | None) -> str:
    if layer is None:
        return ".".join(path)
    return ".".join((*path[:2], str(layer), *path[2:]))


def _device(stack, stacked: bool, start: int, stop: int, dtype: str) -> jax.Array:
    part = stack[start:stop] if stacked else stack[None]
    if getattr(part, "dtype", None) == jnp.bfloat16 or not isinstance(part, jax.Array):
        part = jnp.asarray(part)
    return part.astype(dtype)


def _null_keys(key, name: str, layers: list, seeds: int) -> jax.Array:
    if not seeds:
        return jnp.zeros((len(layers), 0, 2), jnp.uint32)
    return jnp.stack([jnp.stack([jax.random.key_data(null_key(key, name, layer, s))
                                 for s in range(seeds)]) for layer in layers])


@jax.jit
def _factorize_stack(stack: jax.Array):
    return map_layers(factorize, stack)


@functools.partial(jax.jit, static_argnames=("k", "bands"))
def _compare_stack(ref, ref_factors, tgt, keys, *, k: int, bands: tuple[int, int]):
    """Over layers (``map_layers``): factorize target, compare, and the same per null draw."""

    def one(w_ref, factors, w_tgt, layer_keys):
        if layer_keys.shape[0] == 0:
            scalars, arrays = compare(w_ref, factors, w_tgt, factorize(w_tgt), k=k, bands=bands)
            return scalars, arrays, {}, {}
        # Target and null draws go through one looped `compare` (one copy in the program).
        norm = jnp.sqrt(jnp.sum((w_tgt - w_ref) ** 2))
        draws = jax.vmap(lambda raw: matched_norm_perturbation(
            jax.random.wrap_key_data(raw), w_ref, norm))(layer_keys)
        candidates = jnp.concatenate([w_tgt[None], draws.astype(w_tgt.dtype)])
        scalars, arrays = map_layers(
            lambda w: compare(w_ref, factors, w, factorize(w), k=k, bands=bands), candidates)
        first = lambda tree: jax.tree.map(lambda x: x[0], tree)
        rest = lambda tree: jax.tree.map(lambda x: x[1:], tree)
        return first(scalars), first(arrays), rest(scalars), rest(arrays)

    return map_layers(one, ref, ref_factors, tgt, keys)


def summarize(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] = (
        "sigma_drift", "chordal_norm_u", "chordal_norm_v", "magnitude_share",
        "rotation_share", "sigma_drift_top768", "magnitude_share_top768",
        "rotation_share_top768")) -> list[dict[str, Any]]:
    """Means of ``metrics`` (and their ``null_`` twins) per (target, module type)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["module"]), []).append(row)
    out = []
    for (target, module), members in groups.items():
        entry: dict[str, Any] = {"target": target, "module": module, "matrices": len(members)}
        for metric in metrics:
            for column in (metric, f"null_{metric}"):
                values = [r[column] for r in members if column in r]
                if values:
                    entry[column] = float(np.nanmean(values))
        out.append(entry)
    return out
