"""The real pretrained model through rotax's I/O: the GGUF import against transformers' own GGUF
loader, the chat-template prompt ids, export byte-identical and reloadable by transformers, and
bad GGUF files refused by name."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import rotax
from rotax.io.gguf_import import GGUFImportError, import_gguf
from rotax.io.tokenizer import encode_prompt
from tests.support import real_model
from tests.support.real_model import CHAT_PROMPTS


def _tensors(directory):
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def test_import_equals_transformers_gguf_loader(smollm2_dir):
    """Every tensor rotax wrote equals what transformers' GGUF loader dequantizes (its q/k
    un-permutation included); the config is the model card's architecture."""
    from transformers import AutoModelForCausalLM

    gguf = real_model.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    want = {k: v.numpy() for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    got = _tensors(smollm2_dir)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], value), name
    hf = json.loads((smollm2_dir / "config.json").read_text())
    assert (hf["num_hidden_layers"], hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"],
            hf["vocab_size"], hf["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, True)
    assert sum(v.size for v in got.values()) == 134_515_008


def test_prompt_ids_equal_the_gguf_chat_template(smollm2_rotax):
    """rotax's prompt path on the imported tokenizer gives the ids transformers' tokenizer read
    straight from the GGUF file gives with apply_chat_template."""
    from transformers import AutoTokenizer

    _, _, tok = smollm2_rotax
    gguf = real_model.gguf_path()
    reference = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for messages in CHAT_PROMPTS:
        want = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
        assert encode_prompt(tok, messages) == list(want)
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == 2


def test_export_is_byte_identical_and_transformers_reloads_it(smollm2_dir, smollm2_rotax, smollm2_torch, tmp_path):
    cfg, params, _ = smollm2_rotax
    out = tmp_path / "exported"
    rotax.export_hf(cfg, params, out, source=smollm2_dir)
    got, want = _tensors(out), _tensors(smollm2_dir)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name
    tokens = torch.tensor([[1, 9690, 198, 2683, 314, 253, 5356, 30, 2, 198]])
    reloaded = real_model.torch_model(out)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, smollm2_torch(tokens).logits)


def test_truncated_gguf_is_refused_by_name(tmp_path):
    data = real_model.gguf_path().read_bytes()
    for size in (1000, len(data) // 2):
        bad = tmp_path / f"cut-{size}.gguf"
        bad.write_bytes(data[:size])
        with pytest.raises(GGUFImportError, match=rf"cut-{size}\.gguf.*truncated"):
            import_gguf(bad, tmp_path / f"out-{size}")
        assert not (tmp_path / f"out-{size}").exists() and not (tmp_path / f"out-{size}.importing").exists()


def test_gguf_of_another_architecture_is_refused_by_name(tmp_path):
    import gguf

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFImportError, match=r"tiny-gpt2\.gguf: GGUF architecture 'gpt2' is not supported"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_non_empty_output(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GGUFImportError, match=r"taken: exists and is not empty"):
        import_gguf(real_model.gguf_path(), out)
    assert (out / "keep.txt").read_text() == "mine"
    shutil.rmtree(out)
