"""The reference reset grid (``study.reset_grid=reference``) against a numpy port of the study's
``svd_replace`` (``analysis/svd_recover_dir.py``, ``svd_recover_by_layer.py``: ``k = min(k, n)``,
``k == n`` returns the base weight, otherwise base U,V in the top k with the target's Σ) applied
the way its scripts select tensors (every 2-D tensor; in layer resets the 2-D tensors of the
chosen layers plus, for Llama's names, embeddings and head)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rotax.runtime.tree_paths import flatten_by_path
from rotax.study import stage_resets

H, KV, I, V, L = 12, 8, 20, 24, 4


def port_svd_replace(w_base, w_target, k_top, k_tail=0):
    ub, sb, vb = np.linalg.svd(np.asarray(w_base, np.float64), full_matrices=False)
    ut, st, vt = np.linalg.svd(np.asarray(w_target, np.float64), full_matrices=False)
    n = ub.shape[1]
    k_top = min(k_top, n)
    k_tail = min(k_tail, n - k_top)
    if k_top == k_tail == 0:
        return np.asarray(w_target, np.float64)
    if k_top + k_tail == n:
        return np.asarray(w_base, np.float64)
    u = np.concatenate([ub[:, :k_top], ut[:, k_top:n - k_tail], ub[:, n - k_tail:]], axis=1)
    v = np.concatenate([vb[:k_top], vt[k_top:n - k_tail], vb[n - k_tail:]], axis=0)
    return u @ np.diag(st) @ v  # the target's singular values (S_new is computed, unused)


def _tree(seed):
    rng = np.random.default_rng(seed)
    r = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
    return {"model": {"embed_tokens": {"weight": r(V, H)},
                      "layers": {"self_attn": {"q_proj": {"weight": r(L, H, H), "bias": r(L, H)},
                                               "k_proj": {"weight": r(L, KV, H)}},
                                 "mlp": {"down_proj": {"weight": r(L, H, I)}},
                                 "input_layernorm": {"weight": r(L, H)}},
                      "norm": {"weight": r(H)}},
            "lm_head": {"weight": r(V, H)}}


def _study(embed_head):
    return ml_collections.ConfigDict({"reference_ranks": (10,), "reference_layer_ranges": ("0-1",),
                                      "reference_layer_embed_head": embed_head})


@pytest.fixture(scope="module")
def pair():
    return _tree(0), _tree(1)  # (SFT end = target, peak = reference)


def _variant(study, name):
    return next(fn for n, _, _, fn in stage_resets.reference_reset_variants(study) if n == name)


def test_uv_merge_touches_every_matrix_at_min_k_n(pair):
    target, base = pair
    out = flatten_by_path(_variant(_study(False), "UV merge top 10, all 2-D")(target, base, {}))
    flat_t, flat_b = flatten_by_path(target), flatten_by_path(base)
    for path, leaf in out.items():
        got, t, b = np.asarray(leaf), np.asarray(flat_t[path]), np.asarray(flat_b[path])
        if path[-1] == "weight" and t.ndim == (3 if "layers" in path else 2):
            want = np.stack([port_svd_replace(b[i], t[i], 10) for i in range(L)]) if t.ndim == 3 \
                else port_svd_replace(b, t, 10)
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
        else:  # norms and biases: untouched
            np.testing.assert_array_equal(got, t)
    # the narrow k projection (n = 8 < 10) is fully reverted, embed and head are merged
    np.testing.assert_array_equal(out[("model", "layers", "self_attn", "k_proj", "weight")],
                                  flat_b[("model", "layers", "self_attn", "k_proj", "weight")])
    assert not np.allclose(out[("lm_head", "weight")], flat_t[("lm_head", "weight")])


@pytest.mark.parametrize("embed_head", [False, True])
def test_layer_reset_reverts_matrices_only(pair, embed_head):
    target, base = pair
    edited = _variant(_study(embed_head), "layer reset 0-1, 2-D only")(target, base, {})
    out, flat_t, flat_b = flatten_by_path(edited), flatten_by_path(target), flatten_by_path(base)
    for path, leaf in out.items():
        got, t, b = np.asarray(leaf), np.asarray(flat_t[path]), np.asarray(flat_b[path])
        if path[-1] == "weight" and t.ndim == 3:  # stacked matrices: layers 0-1 from the base
            np.testing.assert_array_equal(got[:2], b[:2])
            np.testing.assert_array_equal(got[2:], t[2:])
        elif path[0] == "lm_head" or path[:2] == ("model", "embed_tokens"):
            np.testing.assert_array_equal(got, b if embed_head else t)
        else:  # norms, biases, the final norm
            np.testing.assert_array_equal(got, t)



def test_the_reset_claims_judge_a_row_of_either_grid():
    """The papers' two reset claims (top singular directions; first ~25% of layers) name a row
    of the reference grid too (before, they looked up rotax-grid names and were skipped there);
    the Σ-only control exists only in the rotax grid."""
    study = ml_collections.ConfigDict({"reset_grid": "reference", "reference_ranks": (2560, 3072),
                                       "reference_layer_ranges": ("0-9",), "reference_layer_embed_head": True})
    names = [v[0] for v in stage_resets.grid_variants(study, L, True)]
    assert stage_resets.claim_rows(names, "reference") == {
        "uv_merge_recovers": "UV merge top 2560, all 2-D", "layer_reset_recovers": "layer reset 0-9, 2-D only"}
    names = [v[0] for v in stage_resets.grid_variants(ml_collections.ConfigDict({"reset_grid": "rotax"}), L, True)]
    assert stage_resets.claim_rows(names, "rotax") == {
        "uv_merge_recovers": "UV merge top 20%", "layer_reset_recovers": "layer reset first 25%",
        "sigma_only_null": "Σ-only top 20% (control)"}
    with pytest.raises(ValueError, match="reset_grid 'svd'"):
        stage_resets.grid_variants(ml_collections.ConfigDict({"reset_grid": "svd"}), L, True)
