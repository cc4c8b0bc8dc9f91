"""A GGUF checkpoint (llama.cpp's format) as an HF safetensors directory rotax can load.

The weights are read and dequantized with the ``gguf`` package (numpy, tensor by tensor) and
renamed to the HF names; llama.cpp stores Llama's q/k projections with their rows permuted for
its interleaved RoPE, so those are permuted back to HF's split-halves layout. The config and the
tokenizer (with its chat template) come from transformers' GGUF reader, which needs torch
installed (``pip install 'rotax[gguf]'``). The result is written to a temporary sibling
directory and renamed into place once complete, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rotax.io.hf import write_safetensors_shards
from rotax.models.config import ModelConfig

#: GGUF ``general.architecture`` -> (HF architecture class, q/k rows permuted by llama.cpp)
ARCHITECTURES = {"llama": ("LlamaForCausalLM", True), "qwen2": ("Qwen2ForCausalLM", False)}

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_PER_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


class GGUFImportError(ValueError):
    """A GGUF file rotax cannot import; the message names the file and what is wrong."""


@dataclass
class GGUFImport:
    out_dir: Path
    architecture: str
    tensors: int
    quantization: dict[str, int]  # GGUF tensor type -> number of tensors of that type


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF name of a GGUF tensor (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``);
    None for a tensor rotax's decoder has no place for."""
    parts = gguf_name.split(".")
    if len(parts) == 2 and parts[0] in _TOP_LEVEL:
        return f"{_TOP_LEVEL[parts[0]]}.{parts[1]}"
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _PER_LAYER:
        return f"model.layers.{parts[1]}.{_PER_LAYER[parts[2]]}.{parts[3]}"
    return None


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation: within each head the rows were reordered from
    HF's ``[first half | second half]`` to interleaved pairs. ``weight`` ``[heads*head_dim, ...]``."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _open(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(path)
    except Exception as err:  # the reader raises ValueError, IndexError, struct errors...
        raise GGUFImportError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err}); "
                              "is it truncated?") from err


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def import_gguf(path, out_dir, *, max_shard_bytes: int = 4 << 30) -> GGUFImport:
    """Writes ``path`` (a ``.gguf`` file) as an HF directory ``out_dir`` (config.json,
    float32 safetensors, tokenizer files with the chat template). Raises GGUFImportError naming
    the file for an unreadable or truncated file or an architecture rotax lacks, and refuses an
    ``out_dir`` that already holds files."""
    from gguf import dequantize

    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise GGUFImportError(f"{out_dir}: exists and is not empty; choose a new --out directory")
    reader = _open(path)
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFImportError(f"{path}: GGUF architecture {arch!r} is not supported; rotax imports "
                              f"{sorted(ARCHITECTURES)}")
    hf_class, permuted = ARCHITECTURES[arch]
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv") or heads)
    names, quantization = {}, {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is None:
            raise GGUFImportError(f"{path}: tensor {tensor.name!r} has no place in a {hf_class}")
        names[name] = tensor
        kind = tensor.tensor_type.name
        quantization[kind] = quantization.get(kind, 0) + 1

    def read(tensor):
        def thunk():
            try:
                weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
            except Exception as err:
                raise GGUFImportError(f"{path}: cannot dequantize tensor {tensor.name!r} "
                                      f"({tensor.tensor_type.name}): {err}") from err
            weight = weight.reshape(tuple(int(d) for d in reversed(tensor.shape)))
            if permuted and ".attn_q." in tensor.name:
                weight = unpermute_rows(weight, heads)
            elif permuted and ".attn_k." in tensor.name:
                weight = unpermute_rows(weight, kv_heads)
            return weight
        return thunk

    staging = out_dir.with_name(out_dir.name + ".importing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_config_and_tokenizer(path, staging, hf_class)
        cfg = ModelConfig.from_hf_dir(staging)  # rotax must accept what it wrote
        _check_complete(path, cfg, set(names))
        write_safetensors_shards([(n, read(t)) for n, t in sorted(names.items())], staging, max_shard_bytes)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return GGUFImport(out_dir, arch, len(names), quantization)


def _write_config_and_tokenizer(path: Path, out: Path, hf_class: str) -> None:
    try:
        from transformers import AutoConfig, AutoTokenizer
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as err:
        raise GGUFImportError(f"{path}: transformers' GGUF reader is not usable ({err}); install "
                              "the extra: pip install 'rotax[gguf]'") from err
    config.architectures = [hf_class]
    config.dtype = "float32"
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _check_complete(path: Path, cfg: ModelConfig, names: set[str]) -> None:
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_word_embeddings:
        expected.add("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        expected.update(f"model.layers.{i}.{m}.weight" for m in _PER_LAYER.values())
    missing = sorted(expected - names)
    if missing:
        raise GGUFImportError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
