"""Spectral comparison of one matrix pair: singular values, principal angles, energy split.

Everything here works on a single ``[m, n]`` pair and is mapped over the stacked layer axis with
:func:`map_layers` and ``jax.jit``-ed per shape (see ``rotax.analysis.spectral`` for the tree driver).
Each matrix is factorized once (thin SVD, ``W = U diag(s) Vh``, ``U [m, r]``, ``s [r]``,
``Vh [r, n]``, ``r = min(m, n)``) and every metric is derived from those factors.

Numerics (DESIGN invariant 9): callers upcast to float32 (or float64 with x64 enabled); all
matmuls run at ``precision="highest"``. Principal angles use the sine/cosine method of
``scipy.linalg.subspace_angles``: arccos of the cosines for large angles, arcsin of the sines
(singular values of the residual ``Q_b - Q_a Q_aᵀ Q_b``) for angles below 45°, because
``arccos(1 - 5e-9)`` rounds to 0 in float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
#: The study's fixed top rank (``TOP_RANK_UV`` of its ``analysis/raw_metrics_angle.py``): its
#: relative σ change covers the first ``min(768, m, n)`` singular values and its energy split
#: the top block of that size; the ``*_top768`` columns are those, comparable with the papers.
REFERENCE_TOP_RANK = 768


def map_layers(fn, *stacks):
    """``fn`` over axis 0 of ``stacks``: ``jax.vmap`` on accelerators (batched SVD kernels),
    ``lax.map`` on CPU. On CPU, jaxlib 0.10's batched LAPACK SVD splits its batch over the
    intra-op thread pool and blocks on it; two batched SVDs that XLA runs concurrently then
    deadlock (reproduced with two [2, 512, 384] SVDs in one program). LAPACK loops over the batch
    anyway, so the sequential map costs nothing measurable there."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda args: fn(*args), stacks)
    return jax.vmap(fn)(*stacks)


def resolve_rank(k: int | float, n: int) -> int:
    """A rank from ``k``: an ``int`` is a rank, a ``float`` in ``[0, 1]`` a fraction of ``n``
    (rounded half up). Raises ValueError outside ``[0, n]``."""
    if isinstance(k, bool):
        raise ValueError(f"rank {k!r} must be an int (rank) or a float fraction")
    if isinstance(k, float):
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"fraction {k} must lie in [0, 1]")
        return int(math.floor(k * n + 0.5))
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"rank {k} must lie in [0, {n}]")
    return k


def rank_setting(value) -> int | float:
    """A config value as :func:`resolve_rank` reads it: ml_collections stores an int given for
    a float field as a float, so an integral value above 1 (``64`` or ``64.0``) is a rank and
    anything in ``[0, 1]`` a fraction."""
    if isinstance(value, bool):
        raise ValueError(f"rank setting {value!r} must be a rank or a fraction")
    if isinstance(value, int):
        return value
    value = float(value)
    if value > 1.0:
        if not value.is_integer():
            raise ValueError(f"rank setting {value}: above 1 it must be a whole rank")
        return int(value)
    return value


def band_edges(n: int, bands: tuple[float, float]) -> tuple[int, int]:
    """``(head_end, tail_start)`` for head/middle/tail bands of ``n`` indices: the head is the
    first ``bands[0]`` fraction, the tail the last ``bands[1]`` fraction (each at least one
    index when ``n >= 3``)."""
    head = max(1, resolve_rank(float(bands[0]), n)) if n >= 3 else min(n, 1)
    tail = max(1, resolve_rank(float(bands[1]), n)) if n >= 3 else 0
    head = min(head, n)
    tail = min(tail, n - head)
    return head, n - tail


class Factors(NamedTuple):
    """Thin SVD ``W = u @ diag(s) @ vh``: ``u [m, r]``, ``s [r]`` descending, ``vh [r, n]``."""

    u: jax.Array
    s: jax.Array
    vh: jax.Array


def factorize(w: jax.Array) -> Factors:
    """Thin SVD of ``w [m, n]`` (only the ``r = min(m, n)`` needed columns are formed)."""
    u, s, vh = jnp.linalg.svd(w, full_matrices=False)
    return Factors(u, s, vh)


def _svdvals(x: jax.Array) -> jax.Array:
    return jnp.linalg.svd(x, compute_uv=False)


def principal_angles(a: jax.Array, b: jax.Array, cross: jax.Array | None = None) -> jax.Array:
    """Principal angles (radians, descending, as scipy) between ``span(a)`` and ``span(b)``.

    ``a [m, p]``, ``b [m, q]`` must have orthonormal columns (singular vectors do); ``cross``
    may pass an already computed ``aᵀb [p, q]``. Returns ``min(p, q)`` angles. When
    ``p + q > m`` the first ``p + q - m`` angles are 0 by geometry."""
    if cross is None:
        cross = jnp.matmul(a.T, b, precision=HIGHEST)  # [p, q]
    cos = _svdvals(cross)  # descending, min(p, q)
    if a.shape[1] >= b.shape[1]:
        residual = b - jnp.matmul(a, cross, precision=HIGHEST)
    else:
        residual = a - jnp.matmul(b, cross.T, precision=HIGHEST)
    sin = _svdvals(residual)  # descending, min(p, q)
    from_cos = jnp.arccos(jnp.clip(cos, -1.0, 1.0))  # ascending angles
    from_sin = jnp.arcsin(jnp.clip(sin[::-1], -1.0, 1.0))  # ascending angles
    ascending = jnp.where(cos**2 >= 0.5, from_sin, from_cos)
    return ascending[::-1]


def angle_summary(theta: jax.Array) -> dict[str, jax.Array]:
    """Normalized summaries of ``k`` principal angles ``theta [k]``:

    ``angle_mean_deg``, ``angle_max_deg``; ``mean_sin2`` = mean sin²θ ∈ [0, 1];
    ``grassmann`` = ‖θ‖₂/√k ∈ [0, π/2]; ``chordal`` = ‖P_a − P_b‖_F = sqrt(2 Σ sin²θ)
    (= sqrt(2k − 2‖aᵀb‖_F²), computed from the sines so small angles keep their precision);
    ``chordal_norm`` = chordal/√(2k) ∈ [0, 1]."""
    sin2 = jnp.sin(theta) ** 2
    k = theta.shape[0]
    return {
        "angle_mean_deg": jnp.degrees(jnp.mean(theta)),
        "angle_max_deg": jnp.degrees(jnp.max(theta)),
        "mean_sin2": jnp.mean(sin2),
        "grassmann": jnp.sqrt(jnp.mean(theta**2)),
        "chordal": jnp.sqrt(2.0 * jnp.sum(sin2)),
        "chordal_norm": jnp.sqrt(jnp.mean(sin2)) if k else jnp.zeros(()),
    }


def best_match(cross: jax.Array) -> jax.Array:
    """Mean over reference directions ``i`` of ``max_j |⟨u_i^r, u_j^t⟩|`` for ``cross [k, k]``
    = ``U_r[:, :k]ᵀ U_t[:, :k]`` (the study's alignment score; 1 = every direction kept)."""
    return jnp.mean(jnp.max(jnp.abs(cross), axis=1))


def _relative_change(s_ref: jax.Array, s_tgt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(σ_t − σ_r)/σ_r`` and a mask of indices where σ_r is resolvable (> eps·σ_max)."""
    eps = jnp.finfo(s_ref.dtype).eps
    valid = s_ref > 16 * eps * s_ref[0]
    rel = jnp.where(valid, (s_tgt - s_ref) / jnp.where(valid, s_ref, 1.0), 0.0)
    return rel, valid


def _masked_mean(x, mask):
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _band_mean_sin2(u_ref, u_tgt, lo: int, hi: int) -> jax.Array:
    """Mean sin² of the principal angles between the band subspaces ``[lo, hi)``, from the
    exact identity Σcos²θ = ‖U_r,bᵀ U_t,b‖_F² (cheap; loses resolution below ~1e-7)."""
    if hi <= lo:
        return jnp.zeros((), u_ref.dtype)
    cross = jnp.matmul(u_ref[:, lo:hi].T, u_tgt[:, lo:hi], precision=HIGHEST)
    return jnp.clip(1.0 - jnp.sum(cross**2) / (hi - lo), 0.0, 1.0)


def compare(w_ref: jax.Array, ref: Factors, w_tgt: jax.Array, tgt: Factors, *, k: int,
            bands: tuple[int, int]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """All metrics of one pair ``w_ref, w_tgt [m, n]`` from their factors.

    ``k``: rank of the top subspaces for principal angles; ``bands``: ``(head_end,
    tail_start)`` indices from :func:`band_edges`. Returns ``(scalars, arrays)``: scalar metrics
    (the metric columns of ``rotax.analysis.spectral.SpectralResult.rows``) and per-index arrays ``sigma_ref, sigma_tgt [r]``,
    ``angles_u, angles_v [k]`` (radians, descending)."""
    r = ref.s.shape[0]
    head, tail = bands
    out: dict[str, jax.Array] = {}
    rel, valid = _relative_change(ref.s, tgt.s)
    idx = jnp.arange(r)
    out["sigma_drift"] = _masked_mean(jnp.abs(rel), valid)
    for name, lo, hi in (("head", 0, head), ("middle", head, tail), ("tail", tail, r)):
        band = (idx >= lo) & (idx < hi)
        out[f"sigma_drift_{name}"] = _masked_mean(jnp.abs(rel), valid & band)
    out["max_abs_rel_dsigma"] = jnp.max(jnp.where(valid, jnp.abs(rel), 0.0))
    top_rank = min(REFERENCE_TOP_RANK, r)
    out["sigma_drift_top768"] = _masked_mean(jnp.abs(rel), valid & (idx < top_rank))

    delta = w_tgt - w_ref
    delta2 = jnp.sum(delta**2)
    out["delta_norm"] = jnp.sqrt(delta2)
    out["rel_delta_norm"] = jnp.sqrt(delta2) / jnp.sqrt(jnp.sum(ref.s**2))

    arrays = {"sigma_ref": ref.s, "sigma_tgt": tgt.s}
    v_ref, v_tgt = ref.vh.T, tgt.vh.T
    for side, basis_ref, basis_tgt in (("u", ref.u, tgt.u), ("v", v_ref, v_tgt)):
        top_ref, top_tgt = basis_ref[:, :k], basis_tgt[:, :k]
        cross = jnp.matmul(top_ref.T, top_tgt, precision=HIGHEST)
        theta = principal_angles(top_ref, top_tgt, cross)
        arrays[f"angles_{side}"] = theta
        for key, value in angle_summary(theta).items():
            out[f"{key}_{side}"] = value
        out[f"best_match_{side}"] = best_match(cross)
        for name, lo, hi in (("head", 0, head), ("middle", head, tail), ("tail", tail, r)):
            out[f"band_sin2_{side}_{name}"] = _band_mean_sin2(basis_ref, basis_tgt, lo, hi)

    # Energy split of ΔW in the reference basis, C = U_rᵀ ΔW V_r [r, r], from one [r, m, n]
    # product instead of two: one of U_r, V_r is square (r = min(m, n)) and orthogonal, so
    # ‖C‖_F is the norm of the one-sided product, and C_ii = (U_rᵀ ΔW)_i · v_i = u_i · (ΔW V_r)_i.
    if v_ref.shape[0] == r:  # m >= n: V_r square
        side = jnp.matmul(ref.u.T, delta, precision=HIGHEST)  # [r, n]
        diag = jnp.sum(side * ref.vh, axis=1)

        def leading_block(t):  # C[:t, :t]
            return jnp.matmul(side[:t], v_ref[:, :t], precision=HIGHEST)
    else:  # m < n: U_r square
        side = jnp.matmul(delta, v_ref, precision=HIGHEST)  # [m, r]
        diag = jnp.sum(ref.u * side, axis=0)

        def leading_block(t):
            return jnp.matmul(ref.u[:, :t].T, side[:, :t], precision=HIGHEST)
    top = leading_block(k)
    diag2 = jnp.sum(diag**2)
    total2 = jnp.sum(side**2)
    top_diag2 = jnp.sum(jnp.diagonal(top) ** 2)
    safe = jnp.where(delta2 > 0, delta2, jnp.nan)
    out["magnitude_share"] = diag2 / safe
    out["rotation_share"] = (total2 - diag2) / safe
    out["outside_share"] = jnp.clip(1.0 - total2 / safe, 0.0, 1.0)
    out["magnitude_share_topk"] = top_diag2 / safe
    out["rotation_share_topk"] = (jnp.sum(top**2) - top_diag2) / safe
    block = leading_block(top_rank)
    block_diag2 = jnp.sum(jnp.diagonal(block) ** 2)
    out["magnitude_share_top768"] = block_diag2 / safe
    out["rotation_share_top768"] = (jnp.sum(block**2) - block_diag2) / safe
    return out, arrays


def matched_norm_perturbation(key: jax.Array, reference: jax.Array, norm: jax.Array) -> jax.Array:
    """``reference + E`` with ``E`` isotropic Gaussian scaled to Frobenius norm ``norm``.

    ``reference [m, n]``; ``key`` a ``jax.random`` key; the same key gives the same ``E``."""
    noise = jax.random.normal(key, reference.shape, reference.dtype)
    return reference + noise * (norm / jnp.sqrt(jnp.sum(noise**2)))
