"""Restoration operators: pure functions ``(target, reference, selector, ...) -> params``.

All take and return canonical trees (see docs/architecture.md). For each selected weight matrix
(``[L, out, in]`` leaves on the selected stacked layers, or 2-D embed/head), with thin SVDs
``W_r = U_r Σ_r V_rᵀ`` and ``W_t = U_t Σ_t V_tᵀ``, ``n = min(out, in)``, head = the first
``k_top`` indices and tail = the last ``k_tail``:

* :func:`uv_merge`: ``U' = [U_r head | U_t middle | U_r tail]``, ``V'`` likewise,
  ``W' = U' diag(Σ_t) V'ᵀ`` (reference directions, target magnitudes).
* :func:`triplet_swap`: the same ``U', V'`` with ``Σ' = [Σ_r head | Σ_t middle | Σ_r tail]``.
* :func:`sigma_only`: ``U_t, V_t`` kept, ``Σ' = [Σ_r head | Σ_t middle | Σ_r tail]``.
* :func:`reset_layers`: whole layers (every tensor, norms and biases too) from the reference.

``k_top``/``k_tail``: an ``int`` rank or a ``float`` fraction of ``n``; with ``clamp_ranks`` an
``int`` above ``n`` means ``n`` (the study's ``min(k, n)``: its absolute ranks 2560-4096 fully
revert the narrow k/v projections), otherwise it is an error. Edges, as in the study's
code: ``k_top = k_tail = 0`` returns the target tensor object unchanged; for ``uv_merge`` and
``triplet_swap`` ``k_top + k_tail = n`` returns the reference values exactly (note: the
``uv_merge`` formula itself would give ``U_r Σ_t V_rᵀ`` there). Unselected tensors and layers
are returned bit-identical. Arithmetic is float32 (float64 for float64 inputs) at
``precision="highest"``; results are cast back to the target's dtype. Sharded inputs keep their
sharding (each leaf runs in ``jax.jit`` with ``out_shardings`` = the target leaf's sharding).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rotax.analysis.selectors import Selector, layer_numbering, stacked_indices
from rotax.analysis.subspace import HIGHEST, map_layers, resolve_rank
from rotax.runtime.tree_paths import flatten_by_path, is_stacked, unflatten_like



def check_compatible(target, reference) -> None:
    """Raises ValueError naming the first tensor present in only one tree or whose shapes
    differ (with both shapes)."""
    flat_t, flat_r = flatten_by_path(target), flatten_by_path(reference)
    for path, leaf in flat_t.items():
        name = ".".join(path)
        if path not in flat_r:
            raise ValueError(f"tensor {name!r} (target shape {tuple(leaf.shape)}) is missing "
                             "from the reference")
        if tuple(leaf.shape) != tuple(flat_r[path].shape):
            raise ValueError(f"tensor {name!r}: target shape {tuple(leaf.shape)} vs reference "
                             f"shape {tuple(flat_r[path].shape)}")
    for path, leaf in flat_r.items():
        if path not in flat_t:
            raise ValueError(f"tensor {'.'.join(path)!r} (reference shape {tuple(leaf.shape)}) "
                             "is missing from the target")


def merge_matrix(w_tgt: jax.Array, w_ref: jax.Array, k_top: int, k_tail: int,
                 mode: str) -> jax.Array:
    """The formula of one operator on one ``[m, n]`` pair, without edge shortcuts.

    ``mode``: ``"uv"`` (UV merge), ``"swap"`` (triplet swap) or ``"sigma"`` (Σ-only);
    ``k_top``, ``k_tail``: integer ranks. Returns ``[m, n]`` in the inputs' dtype."""
    n = min(w_tgt.shape)
    index = np.arange(n)
    from_ref = (index < k_top) | (index >= n - k_tail)  # static mask over the n triplets
    u_t, s_t, vh_t = jnp.linalg.svd(w_tgt, full_matrices=False)
    if mode == "sigma":
        s_r = jnp.linalg.svd(w_ref, compute_uv=False)  # only Σ_r is needed
        u, vh, s = u_t, vh_t, jnp.where(from_ref, s_r, s_t)
    elif mode in ("uv", "swap"):
        u_r, s_r, vh_r = jnp.linalg.svd(w_ref, full_matrices=False)
        u = jnp.where(from_ref[None, :], u_r, u_t)
        vh = jnp.where(from_ref[:, None], vh_r, vh_t)
        s = s_t if mode == "uv" else jnp.where(from_ref, s_r, s_t)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return jnp.matmul(u * s[None, :], vh, precision=HIGHEST)


def uv_merge(target, reference, selector: Selector, k_top, k_tail=0, *,
             layer_ids: Sequence[int] | None = None, num_hidden_layers: int | None = None,
             clamp_ranks: bool = False):
    """Reference singular directions (top ``k_top`` and bottom ``k_tail``) with the target's
    singular values, on the matrices ``selector`` picks. Returns a new canonical tree."""
    return _restore(target, reference, selector, k_top, k_tail, "uv", layer_ids, num_hidden_layers,
                    clamp_ranks)


def triplet_swap(target, reference, selector: Selector, k_top, k_tail=0, *,
                 layer_ids: Sequence[int] | None = None, num_hidden_layers: int | None = None,
                 clamp_ranks: bool = False):
    """Reference singular triplets (vectors and values) in the top ``k_top`` / bottom
    ``k_tail`` slots, target triplets between. Returns a new canonical tree."""
    return _restore(target, reference, selector, k_top, k_tail, "swap", layer_ids,
                    num_hidden_layers, clamp_ranks)


def sigma_only(target, reference, selector: Selector, k_top, k_tail=0, *,
               layer_ids: Sequence[int] | None = None, num_hidden_layers: int | None = None,
               clamp_ranks: bool = False):
    """Target singular vectors, reference singular values in the top ``k_top`` / bottom
    ``k_tail`` slots (the study's control). Returns a new canonical tree."""
    return _restore(target, reference, selector, k_top, k_tail, "sigma", layer_ids,
                    num_hidden_layers, clamp_ranks)


def reset_layers(target, reference, layers, include_embeddings: bool = False,
                 include_head: bool = False, *, layer_ids: Sequence[int] | None = None,
                 num_hidden_layers: int | None = None):
    """Every tensor of the selected HF ``layers`` (spec as in ``rotax.analysis.selectors``; norms and
    biases included) taken from the reference; ``embed_tokens`` / ``lm_head`` only when asked.
    The final norm is never touched. Raises ValueError for an empty selection, mismatched
    trees, or ``include_head`` on a tied model (its head is ``embed_tokens``)."""
    check_compatible(target, reference)
    flat_t, flat_r = flatten_by_path(target), flatten_by_path(reference)
    if include_head and ("lm_head", "weight") not in flat_t:
        raise ValueError("include_head: this model ties its LM head to embed_tokens (no lm_head "
                         "tensor); use include_embeddings=True")
    num_stacked = next((x.shape[0] for p, x in flat_t.items() if is_stacked(p)), 0)
    indices = stacked_indices(layers, layer_ids, num_stacked, num_hidden_layers) \
        if num_stacked else ()
    if not indices and not (include_embeddings or include_head):
        raise ValueError(f"reset_layers({layers!r}) selects nothing")
    out = {}
    for path, leaf in flat_t.items():
        ref = flat_r[path]
        if is_stacked(path) and indices:
            out[path] = _leaf_program("layers", 0, 0, indices, _sharding(leaf))(leaf, ref)
        elif (path[:2] == ("model", "embed_tokens") and include_embeddings) or (
                path[0] == "lm_head" and include_head):
            out[path] = ref if ref.dtype == leaf.dtype else _cast_like(ref, leaf)
        else:
            out[path] = leaf
    return unflatten_like(target, out)


def _restore(target, reference, selector, k_top, k_tail, mode, layer_ids, num_hidden_layers,
             clamp_ranks=False):
    check_compatible(target, reference)
    selector = selector if isinstance(selector, Selector) else Selector(**dict(selector))
    chosen = selector.resolve(target, layer_ids, num_hidden_layers)
    flat_t, flat_r = flatten_by_path(target), flatten_by_path(reference)
    out = dict(flat_t)
    for path, indices in chosen.items():
        leaf, ref = flat_t[path], flat_r[path]
        n = min(leaf.shape[-2:])
        if clamp_ranks:  # the study's k_top = min(k_top, n), k_tail = min(k_tail, n - k_top)
            top = resolve_rank(min(k_top, n) if _is_rank(k_top) else k_top, n)
            tail = min(resolve_rank(min(k_tail, n) if _is_rank(k_tail) else k_tail, n), n - top)
        else:
            top, tail = resolve_rank(k_top, n), resolve_rank(k_tail, n)
        if top + tail > n:
            raise ValueError(f"{'.'.join(path)}: k_top + k_tail = {top} + {tail} exceeds "
                             f"min(out, in) = {n}")
        if top == tail == 0:
            continue  # identity: the target tensor itself
        if top + tail == n and mode != "sigma" and indices is None and ref.dtype == leaf.dtype:
            out[path] = ref  # the reference tensor itself
            continue
        if top + tail == n and mode != "sigma":
            program = _leaf_program("layers", 0, 0, indices, _sharding(leaf))  # the reference
        else:
            program = _leaf_program(mode, top, tail, indices, _sharding(leaf))
        out[path] = program(leaf, ref)
    return unflatten_like(target, out)


def _is_rank(k) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, bool)


@functools.lru_cache(maxsize=256)
def _leaf_program(mode: str, k_top: int, k_tail: int, indices: tuple[int, ...] | None,
                  sharding):
    """A jitted ``(target_leaf, reference_leaf) -> leaf`` for one operator and selection."""

    def program(t, r):
        sel_t, sel_r = (t, r) if indices is None else (_take(t, indices), _take(r, indices))
        if mode == "layers":
            new = sel_r.astype(t.dtype)
        else:
            compute = jnp.float64 if t.dtype == jnp.float64 else jnp.float32
            merge = functools.partial(merge_matrix, k_top=k_top, k_tail=k_tail, mode=mode)
            pair = (sel_t.astype(compute), sel_r.astype(compute))
            if sel_t.ndim == 3:
                new = map_layers(merge, *pair)
            else:
                new = merge(*pair)
            new = new.astype(t.dtype)
        return new if indices is None else _put(t, indices, new)

    return jax.jit(program, out_shardings=sharding)


def _take(x, indices):
    lo, hi = indices[0], indices[-1] + 1
    if tuple(range(lo, hi)) == tuple(indices):
        return x[lo:hi]
    return x[np.asarray(indices)]


def _put(x, indices, values):
    lo, hi = indices[0], indices[-1] + 1
    if tuple(range(lo, hi)) == tuple(indices):
        return jax.lax.dynamic_update_slice_in_dim(x, values, lo, axis=0)
    return x.at[np.asarray(indices)].set(values)


def _sharding(leaf):
    if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
        return None
    return leaf.sharding


@jax.jit
def _cast_to(x, like):
    return x.astype(like.dtype)


def _cast_like(x, like):
    return jax.device_put(_cast_to(x, like), _sharding(like)) if _sharding(like) else _cast_to(x, like)


def selected_layers(target, layers, layer_ids=None, num_hidden_layers=None) -> tuple[int, ...]:
    """HF layer numbers of the stacked layers ``layers`` picks (for logs and reports)."""
    num_stacked = next((x.shape[0] for p, x in flatten_by_path(target).items() if is_stacked(p)), 0)
    ids, _ = layer_numbering(num_stacked, layer_ids, num_hidden_layers)
    return tuple(ids[i] for i in stacked_indices(layers, layer_ids, num_stacked, num_hidden_layers))
