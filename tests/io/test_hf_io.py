"""Load → export → transformers reload; byte identity; corrupted and unsupported inputs."""

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors import safe_open

import rotax
from rotax.models.config import ModelConfig, UnsupportedConfigError
from rotax.io.hf import CheckpointError
from tests.support import hf_fixtures


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return hf_fixtures.llama(tmp_path_factory.mktemp("llama"), tied=False)


@pytest.fixture(scope="module")
def mllama_dir(tmp_path_factory):
    return hf_fixtures.mllama(tmp_path_factory.mktemp("mllama"))


def _tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "np") as h:
            for k in h.keys():
                out[k] = h.get_slice(k)
    return out


def _raw_bytes(path):
    """name -> raw bytes of every tensor in a checkpoint dir (any dtype)."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[k] = (str(v.dtype), tuple(v.shape), v.contiguous().view(torch.uint8).numpy().tobytes())
    return out


@pytest.mark.parametrize("which", ["llama", "mllama"])
def test_export_roundtrip_identical_logits_and_bytes(which, llama_dir, mllama_dir, tmp_path):
    src = llama_dir if which == "llama" else mllama_dir
    cfg, params = rotax.load_hf(src)
    out = tmp_path / "export"
    rotax.export_hf(cfg, params, out, source=src)
    assert _raw_bytes(out) == _raw_bytes(src)  # every tensor, incl. Mllama vision/cross-attn
    tokens = np.random.default_rng(3).integers(0, 90, (2, 17), dtype=np.int32)
    np.testing.assert_array_equal(hf_fixtures.torch_logits(out, tokens), hf_fixtures.torch_logits(src, tokens))


def test_export_sharded_files_and_edited_weights(llama_dir, tmp_path):
    cfg, params = rotax.load_hf(llama_dir)
    edited = jax.tree.map(lambda x: x, params)
    edited["model"]["layers"]["mlp"]["down_proj"]["weight"] = (
        params["model"]["layers"]["mlp"]["down_proj"]["weight"].at[1].multiply(0.5))
    out = tmp_path / "edited"
    report = rotax.export_hf(cfg, edited, out, source=llama_dir, max_shard_bytes=64 << 10)
    assert len(report.files) > 1 and (out / "model.safetensors.index.json").is_file()
    tokens = np.random.default_rng(4).integers(0, 90, (2, 9), dtype=np.int32)
    ref = hf_fixtures.torch_logits(out, tokens)
    got = np.asarray(rotax.forward(cfg, edited, tokens))
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-4
    before, after = _raw_bytes(llama_dir), _raw_bytes(out)
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["model.layers.1.mlp.down_proj.weight"]


def test_bf16_checkpoint_loads_as_bf16_and_exports_identically(tmp_path):
    import torch

    src = hf_fixtures.llama(tmp_path / "bf16", dtype=torch.bfloat16, max_shard_size="100KB")
    assert (src / "model.safetensors.index.json").is_file()
    cfg, params = rotax.load_hf(src)
    assert cfg.param_dtype == "bfloat16"
    assert params["model"]["embed_tokens"]["weight"].dtype == jax.numpy.bfloat16
    rotax.export_hf(cfg, params, tmp_path / "out", source=src)
    assert _raw_bytes(tmp_path / "out") == _raw_bytes(src)
    cfg32, params32 = rotax.load_hf(src, dtype="float32")
    assert params32["model"]["norm"]["weight"].dtype == np.float32
    rotax.export_hf(cfg32, params32, tmp_path / "out32", source=src)  # back in the source dtype
    assert _raw_bytes(tmp_path / "out32") == _raw_bytes(src)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_tensor_is_named(llama_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    bad = _copy(llama_dir, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.2.self_attn.v_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.self_attn\.v_proj\.weight.*missing"):
        rotax.load_hf(bad)


def test_wrong_shape_names_tensor_and_both_shapes(llama_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    bad = _copy(llama_dir, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(95, 64)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\(95, 64\).*\(96, 64\)"):
        rotax.load_hf(bad)


def test_truncated_file_is_reported(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        rotax.load_hf(bad)


@pytest.mark.parametrize("field,value,match", [
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, r"rope_type.*'yarn'"),
    ("sliding_window", 128, r"sliding_window.*128"),
    ("hidden_act", "gelu", r"hidden_act.*'gelu'"),
    ("architectures", ["MistralForCausalLM"], r"architectures.*MistralForCausalLM"),
    ("mlp_bias", True, r"mlp_bias"),
    ("some_new_field", 3, r"some_new_field"),
])
def test_unsupported_config_fields_are_named(llama_dir, field, value, match):
    hf = json.loads((llama_dir / "config.json").read_text())
    hf[field] = value
    with pytest.raises(UnsupportedConfigError, match=match):
        ModelConfig.from_hf_dict(hf)


def test_legacy_transformers4_rope_layout():
    hf = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
          "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "rope_theta": 500000.0, "torch_dtype": "bfloat16",
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    cfg = ModelConfig.from_hf_dict(hf)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling.factor == 32.0 and cfg.head_dim == 4


def test_mllama_layer_numbering(mllama_dir):
    cfg, params = rotax.load_hf(mllama_dir)
    assert cfg.layer_ids == (0, 2, 4) and cfg.cross_attention_layers == (1, 3)
    assert params["model"]["layers"]["mlp"]["up_proj"]["weight"].shape[0] == 3
    assert params["model"]["embed_tokens"]["weight"].shape[0] == cfg.vocab_size + 8
