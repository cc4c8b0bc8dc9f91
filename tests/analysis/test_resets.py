"""rotax.analysis.resets / rotax.analysis.selectors against independent numpy implementations."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rotax.analysis import resets
from rotax.analysis.selectors import Selector, parse_layers, parse_modules

L, H, I, V = 4, 12, 20, 24


# ------------------------------------------------------------ numpy reference implementations


def _np_svd(w):
    return np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)


def np_uv_merge(w_t, w_r, k_top, k_tail):
    u_t, s_t, vh_t = _np_svd(w_t)
    u_r, _, vh_r = _np_svd(w_r)
    n = len(s_t)
    u = np.concatenate([u_r[:, :k_top], u_t[:, k_top:n - k_tail], u_r[:, n - k_tail:]], axis=1)
    vh = np.concatenate([vh_r[:k_top], vh_t[k_top:n - k_tail], vh_r[n - k_tail:]], axis=0)
    return u @ np.diag(s_t) @ vh


def np_triplet_swap(w_t, w_r, k_top, k_tail):
    u_t, s_t, vh_t = _np_svd(w_t)
    u_r, s_r, vh_r = _np_svd(w_r)
    n = len(s_t)
    u = np.concatenate([u_r[:, :k_top], u_t[:, k_top:n - k_tail], u_r[:, n - k_tail:]], axis=1)
    vh = np.concatenate([vh_r[:k_top], vh_t[k_top:n - k_tail], vh_r[n - k_tail:]], axis=0)
    s = np.concatenate([s_r[:k_top], s_t[k_top:n - k_tail], s_r[n - k_tail:]])
    return u @ np.diag(s) @ vh


def np_sigma_only(w_t, w_r, k_top, k_tail):
    u_t, s_t, vh_t = _np_svd(w_t)
    s_r = np.linalg.svd(np.asarray(w_r, np.float64), compute_uv=False)
    n = len(s_t)
    s = np.concatenate([s_r[:k_top], s_t[k_top:n - k_tail], s_r[n - k_tail:]])
    return (u_t * s) @ vh_t


# ------------------------------------------------------------ fixtures


def _tree(seed, layers=L, tied=False):
    rng = np.random.default_rng(seed)
    r = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
    tree = {"model": {"embed_tokens": {"weight": r(V, H)},
                      "layers": {"self_attn": {"q_proj": {"weight": r(layers, H, H), "bias": r(layers, H)},
                                               "k_proj": {"weight": r(layers, 8, H)}},
                                 "mlp": {"down_proj": {"weight": r(layers, H, I)}},
                                 "input_layernorm": {"weight": r(layers, H)}},
                      "norm": {"weight": r(H)}}}
    if not tied:
        tree["lm_head"] = {"weight": r(V, H)}
    return tree


@pytest.fixture(scope="module")
def pair():
    return _tree(0), _tree(1)


def _leaf(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _leaves(tree):
    return {".".join(str(getattr(k, "key", k)) for k in p): x
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


OPS = [(resets.uv_merge, np_uv_merge), (resets.triplet_swap, np_triplet_swap),
       (resets.sigma_only, np_sigma_only)]


# ------------------------------------------------------------ operators vs numpy


@pytest.mark.parametrize("op,np_op", OPS, ids=["uv", "swap", "sigma"])
def test_operators_match_numpy(pair, op, np_op):
    target, reference = pair
    out = op(target, reference, Selector(layers="1-2", modules="q,down,embed"), 0.25, 2)
    for name in ("model.layers.self_attn.q_proj.weight", "model.layers.mlp.down_proj.weight"):
        got, t, r = _leaf(out, name), _leaf(target, name), _leaf(reference, name)
        for i in (1, 2):  # selected: n = 12 -> k_top = 3, k_tail = 2
            np.testing.assert_allclose(got[i], np_op(t[i], r[i], 3, 2), rtol=1e-4, atol=2e-5)
        for i in (0, 3):  # unselected layers: bit-identical
            np.testing.assert_array_equal(got[i], t[i])
    np.testing.assert_allclose(_leaf(out, "model.embed_tokens.weight"),
                               np_op(_leaf(target, "model.embed_tokens.weight"),
                                     _leaf(reference, "model.embed_tokens.weight"), 3, 2),
                               rtol=1e-4, atol=2e-5)
    for name in ("model.layers.self_attn.k_proj.weight", "model.layers.self_attn.q_proj.bias",
                 "model.layers.input_layernorm.weight", "lm_head.weight", "model.norm.weight"):
        assert _leaf(out, name) is _leaf(target, name)


@pytest.mark.parametrize("op", [o for o, _ in OPS], ids=["uv", "swap", "sigma"])
def test_k_zero_is_identity(pair, op):
    target, reference = pair
    out = op(target, reference, Selector(modules="all"), 0, 0)
    assert all(a is b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(target)))


@pytest.mark.parametrize("op", [resets.uv_merge, resets.triplet_swap], ids=["uv", "swap"])
def test_full_rank_returns_reference_exactly(pair, op):
    target, reference = pair
    out = op(target, reference, Selector(modules="q,k,embed"), 1.0)
    for name in ("model.layers.self_attn.q_proj.weight", "model.layers.self_attn.k_proj.weight",
                 "model.embed_tokens.weight"):
        np.testing.assert_array_equal(_leaf(out, name), _leaf(reference, name))
    out = op(target, reference, Selector(modules="q"), 7, 5)  # 7 + 5 = n = 12
    np.testing.assert_array_equal(_leaf(out, "model.layers.self_attn.q_proj.weight"),
                                  _leaf(reference, "model.layers.self_attn.q_proj.weight"))


def test_uv_merge_formula_keeps_target_singular_values_when_bases_are_orthonormal(pair):
    target, reference = pair
    w_t = _leaf(target, "model.layers.mlp.down_proj.weight")[0]
    w_r = _leaf(reference, "model.layers.mlp.down_proj.weight")[0]
    s_t = np.linalg.svd(np.asarray(w_t, np.float64), compute_uv=False)
    full = resets.merge_matrix(w_t, w_r, 12, 0, "uv")  # U' = U_r, V' = V_r: orthonormal
    np.testing.assert_allclose(np.linalg.svd(np.asarray(full), compute_uv=False), s_t, rtol=1e-5)
    # A mixed basis [U_r head | U_t rest] is not orthonormal, so in general σ(W') != Σ_t.
    mixed = np.linalg.svd(np.asarray(resets.merge_matrix(w_t, w_r, 3, 0, "uv")), compute_uv=False)
    assert np.max(np.abs(mixed - s_t) / s_t) > 1e-2


def test_sigma_only_keeps_target_vectors(pair):
    target, reference = pair
    w_t = _leaf(target, "model.layers.self_attn.q_proj.weight")[0]
    w_r = _leaf(reference, "model.layers.self_attn.q_proj.weight")[0]
    out = np.asarray(resets.merge_matrix(w_t, w_r, 12, 0, "sigma"), np.float64)
    s_r = np.linalg.svd(np.asarray(w_r, np.float64), compute_uv=False)
    np.testing.assert_allclose(np.linalg.svd(out, compute_uv=False), s_r, rtol=1e-5)


# ------------------------------------------------------------ layer reset


def test_reset_layers_changes_only_selected_layers(pair):
    target, reference = pair
    out = resets.reset_layers(target, reference, "first 50%")  # HF layers 0-1 of 4
    for name, leaf in _leaves(out).items():
        t, r = _leaves(target)[name], _leaves(reference)[name]
        if name.startswith("model.layers."):
            np.testing.assert_array_equal(leaf[:2], r[:2])  # norms and biases included
            np.testing.assert_array_equal(leaf[2:], t[2:])
        else:
            assert leaf is t, name  # embeddings, head, final norm untouched
    out = resets.reset_layers(target, reference, [3], include_embeddings=True, include_head=True)
    assert _leaf(out, "model.embed_tokens.weight") is _leaf(reference, "model.embed_tokens.weight")
    assert _leaf(out, "lm_head.weight") is _leaf(reference, "lm_head.weight")
    assert _leaf(out, "model.norm.weight") is _leaf(target, "model.norm.weight")


def test_reset_head_on_tied_model_raises():
    target, reference = _tree(0, tied=True), _tree(1, tied=True)
    with pytest.raises(ValueError, match="ties"):
        resets.reset_layers(target, reference, "0", include_head=True)


def test_mllama_numbering_selects_stacked_layers_only(pair):
    target, reference = pair
    ids = (0, 1, 2, 4)  # HF layer 3 is a cross-attention layer, not in the tree
    out = resets.reset_layers(target, reference, "first 50%", layer_ids=ids, num_hidden_layers=5)
    q = _leaf(out, "model.layers.self_attn.q_proj.weight")  # round(2.5) = 3 -> HF 0-2
    np.testing.assert_array_equal(q[:3], _leaf(reference, "model.layers.self_attn.q_proj.weight")[:3])
    np.testing.assert_array_equal(q[3], _leaf(target, "model.layers.self_attn.q_proj.weight")[3])
    assert resets.selected_layers(target, "last 2", ids, 5) == (4,)
    with pytest.raises(ValueError, match="none of which is a stacked layer"):
        resets.uv_merge(target, reference, Selector(layers="3"), 2, layer_ids=ids, num_hidden_layers=5)


# ------------------------------------------------------------ errors, dtypes, jit


def test_mismatched_trees_name_tensor_and_shapes(pair):
    target, reference = pair
    bad = jax.tree.map(lambda x: x, reference)
    bad["model"]["layers"]["mlp"]["down_proj"]["weight"] = jnp.zeros((L, H, I + 1))
    with pytest.raises(ValueError, match=r"down_proj.weight.*\(4, 12, 20\).*\(4, 12, 21\)"):
        resets.uv_merge(target, bad, Selector(), 2)
    del bad["model"]["layers"]["mlp"]
    with pytest.raises(ValueError, match="down_proj.weight.*missing from the reference"):
        resets.reset_layers(target, bad, "0")


def test_empty_selector_raises(pair):
    target, reference = pair
    with pytest.raises(ValueError, match="outside"):
        resets.triplet_swap(target, reference, Selector(layers="9"), 2)
    tied_t, tied_r = _tree(0, tied=True), _tree(1, tied=True)
    with pytest.raises(ValueError, match="matches no tensor"):
        resets.uv_merge(tied_t, tied_r, Selector(modules="head"), 2)
    with pytest.raises(ValueError, match="exceeds"):
        resets.uv_merge(target, reference, Selector(modules="q"), 8, 8)


def test_bfloat16_and_jit(pair):
    target, reference = pair
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), target)
    out = resets.uv_merge(bf16, reference, Selector(modules="k"), 2)
    assert _leaf(out, "model.layers.self_attn.k_proj.weight").dtype == jnp.bfloat16
    eager = resets.triplet_swap(target, reference, Selector(modules="k"), 2, 1)
    jitted = jax.jit(lambda t, r: resets.triplet_swap(t, r, Selector(modules="k"), 2, 1))(target, reference)
    np.testing.assert_allclose(_leaf(jitted, "model.layers.self_attn.k_proj.weight"),
                               _leaf(eager, "model.layers.self_attn.k_proj.weight"), rtol=1e-5, atol=1e-6)


def test_sharded_leaves_keep_their_sharding():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.support.sharded_resets_check"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sharding kept" in proc.stdout


# ------------------------------------------------------------ selectors


def test_layer_spec_grammar():
    assert parse_layers("0-9", 40) == tuple(range(10))
    assert parse_layers("first 25%", 40) == tuple(range(10))
    assert parse_layers("0.25", 40) == parse_layers("25%", 40) == tuple(range(10))
    assert parse_layers("last 25%", 28) == tuple(range(21, 28))
    assert parse_layers("1, 3-4", 6) == (1, 3, 4) and parse_layers([5, 2], 6) == (2, 5)
    assert parse_layers("first 2", 6) == (0, 1) and parse_layers(None, 3) == (0, 1, 2)
    for bad in ("4-2", "first 150%", "lots", "12"):
        with pytest.raises(ValueError):
            parse_layers(bad, 12)
    assert parse_modules("q_proj,k,down") == ("q", "k", "down")
    with pytest.raises(ValueError, match="unknown module"):
        parse_modules("attn")


def test_cli_reset_layers_on_mllama_numbering(tmp_path):
    from safetensors import safe_open

    from rotax.cli import main
    from tests.support import hf_fixtures

    ref = hf_fixtures.mllama(tmp_path / "ref", seed=2)
    tgt = hf_fixtures.mllama(tmp_path / "tgt", seed=3)
    out = tmp_path / "out"
    # 5 HF text layers, cross-attention layers 1 and 3: "first 40%" = HF 0-1 -> stacked HF 0.
    assert main(["reset", "--reference", str(ref), "--target", str(tgt), "--op", "layers",
                 "--layers", "first 40%", "--out", str(out)]) == 0

    def tensors(directory):
        found = {}
        for f in Path(directory).glob("*.safetensors"):
            with safe_open(str(f), framework="numpy") as handle:
                found.update({k: handle.get_tensor(k) for k in handle.keys()})
        return found

    r, t, o = tensors(ref), tensors(tgt), tensors(out)
    assert set(o) == set(t)
    layer = "language_model.model.layers.{}.self_attn.q_proj.weight"
    np.testing.assert_array_equal(o[layer.format(0)], r[layer.format(0)])
    np.testing.assert_array_equal(o[layer.format(2)], t[layer.format(2)])
    cross = next(k for k in t if "layers.1.cross_attn" in k)
    np.testing.assert_array_equal(o[cross], t[cross])  # cross-attention layer: from the target
    norm = "language_model.model.layers.0.input_layernorm.weight"
    np.testing.assert_array_equal(o[norm], r[norm])
    assert main(["reset", "--reference", str(ref), "--target", str(tgt), "--op", "uv-merge",
                 "--top", "20%", "--layers", "4", "--out", str(tmp_path / "uv")]) == 0
    uv = tensors(tmp_path / "uv")
    assert not np.array_equal(uv[layer.format(4)], t[layer.format(4)])
    np.testing.assert_array_equal(uv[layer.format(0)], t[layer.format(0)])
    assert main(["reset", "--reference", str(ref), "--target", str(tgt), "--op", "layers",
                 "--layers", "3", "--out", str(tmp_path / "none")]) == 2  # cross-attention only
