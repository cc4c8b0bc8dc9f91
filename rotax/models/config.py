"""ModelConfig: the decoder's hyper-parameters, built strictly from an HF ``config.json``.

Strict means: a field rotax does not know, or a value it cannot run faithfully (another RoPE
type, sliding-window attention, an MLP bias, ...), raises :class:`UnsupportedConfigError`
naming the field and the value, instead of silently computing something else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


class UnsupportedConfigError(ValueError):
    """An HF config field rotax cannot honour; the message names the field and its value."""


ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MllamaForConditionalGeneration": "mllama",
}
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "mllama": "mllama"}

# Keys the parser below reads (or checks and refuses: see _check_keys).
_PARSED_KEYS = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "rope_scaling", "rope_parameters", "rope_theta", "partial_rotary_factor",
    "max_position_embeddings", "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act",
    "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
    "cross_attention_layers", "pad_token_id", "eos_token_id", "bos_token_id", "text_config",
    "vision_config", "image_token_index", "quantization_config", "rope_interleaved",
}
# Keys that change no arithmetic of a forward pass: bookkeeping transformers writes
# (versions, dtypes, names), training-time settings (dropout, init, gradient checkpointing) and
# generation defaults (sampling lives in rotax.sampling). Besides these, any key starting with
# "_" (transformers' private bookkeeping such as "_name_or_path", "_attn_implementation") and any
# "*_token_id(s)" key (token ids only the tokenizer and generation use) is ignored. Every other
# key is an error: rotax does not guess what an unknown field changes.
_BOOKKEEPING_KEYS = {
    "transformers_version", "torch_dtype", "dtype", "use_cache", "initializer_range",
    "attention_dropout", "dropout", "hidden_dropout", "embd_pdrop", "resid_pdrop", "id2label",
    "label2id", "num_labels", "problem_type", "tokenizer_class", "output_attentions",
    "output_hidden_states", "return_dict", "use_return_dict", "torchscript", "pruned_heads",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "tie_encoder_decoder", "cross_attention_hidden_size", "prefix", "task_specific_params",
    "finetuning_task", "tf_legacy_loss", "use_bfloat16", "gradient_checkpointing",
    "use_flash_attn", "chunk_size", "architectures_note", "model_name", "name_or_path",
    # generation defaults (transformers 4.x wrote them into every config)
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "forced_bos_token_id", "forced_eos_token_id", "decoder_start_token_id", "sep_token_id",
    "output_router_logits", "is_llama_config", "transformers.js_config",
    # Llama's tensor-parallel degree at pre-training: transformers 4.x split its matmuls into
    # that many slices and summed them, the same product
    "pretraining_tp",
}
_SUPPORTED_ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency scaling (``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder hyper-parameters. ``num_layers`` counts stacked (self-attention) layers;
    ``layer_ids[i]`` is the HF layer number of stacked layer ``i``."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2 always; Llama when attention_bias)
    output_bias: bool = False  # o_proj bias (Llama with attention_bias only)
    embed_vocab_size: int | None = None  # rows of embed_tokens (Mllama: vocab + 8)
    num_hidden_layers: int | None = None  # HF layer count incl. cross-attention layers
    layer_ids: tuple[int, ...] = ()
    cross_attention_layers: tuple[int, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: bool = False
    hf_prefix: str = ""  # "language_model." for Mllama
    hf_config: dict | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        if not self.layer_ids:
            object.__setattr__(self, "layer_ids", tuple(range(self.num_layers)))
        if self.num_hidden_layers is None:
            object.__setattr__(self, "num_hidden_layers", self.num_layers)
        if self.embed_vocab_size is None:
            object.__setattr__(self, "embed_vocab_size", self.vocab_size)
        if len(self.layer_ids) != self.num_layers:
            raise ValueError(f"layer_ids has {len(self.layer_ids)} entries, num_layers={self.num_layers}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf_dir(cls, path: str | Path, **overrides) -> "ModelConfig":
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json (is this a Hugging Face model directory?)")
        try:
            hf = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise UnsupportedConfigError(f"{config_file}: not valid JSON ({err})") from err
        return cls.from_hf_dict(hf, **overrides)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
        """Parses an HF config dict (transformers 4.x or 5.x layout). Raises
        UnsupportedConfigError naming the field for anything rotax cannot run faithfully."""
        architecture = _architecture(hf)
        text = hf
        prefix = ""
        if architecture == "mllama":
            if "text_config" not in hf:
                raise UnsupportedConfigError("mllama config has no 'text_config'")
            text = dict(hf["text_config"])
            prefix = "language_model."
        _check_keys(text, architecture)
        fields = _text_fields(text, architecture)
        fields.update(overrides)
        return cls(architecture=architecture, hf_prefix=prefix, hf_config=hf, **fields)


def _architecture(hf: dict) -> str:
    names = hf.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if names:
        raise UnsupportedConfigError(
            f"field 'architectures' = {names!r}: rotax supports {sorted(ARCHITECTURES)}")
    model_type = hf.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise UnsupportedConfigError(
        f"field 'model_type' = {model_type!r}: rotax supports {sorted(MODEL_TYPES)}")


def _is_bookkeeping(key: str) -> bool:
    return (key in _BOOKKEEPING_KEYS or key.startswith("_") or key.endswith("_token_id")
            or key.endswith("_token_ids"))


def _check_keys(text: dict, architecture: str) -> None:
    unknown = sorted(k for k in text if k not in _PARSED_KEYS and not _is_bookkeeping(k))
    if unknown:
        shown = ", ".join(f"{k!r} = {text[k]!r}" for k in unknown)
        raise UnsupportedConfigError(
            f"unknown config field(s) {shown} for architecture {architecture!r}; rotax does not "
            "know what they change, so it refuses to guess")
    if text.get("quantization_config"):
        method = (text["quantization_config"] or {}).get("quant_method", "?")
        raise UnsupportedConfigError(
            f"field 'quantization_config' = {{'quant_method': {method!r}, ...}}: rotax loads "
            "unquantized float weights; dequantize first (a GGUF file: rotax import-gguf)")
    hidden_act = text.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise UnsupportedConfigError(f"field 'hidden_act' = {hidden_act!r}: only 'silu' is supported")
    if text.get("mlp_bias"):
        raise UnsupportedConfigError(f"field 'mlp_bias' = {text['mlp_bias']!r}: MLP biases are not supported")
    if text.get("use_sliding_window"):
        raise UnsupportedConfigError(
            f"field 'use_sliding_window' = True (sliding_window={text.get('sliding_window')}): "
            "sliding-window attention is not supported")
    if architecture != "qwen2" and text.get("sliding_window"):
        raise UnsupportedConfigError(
            f"field 'sliding_window' = {text['sliding_window']}: sliding-window attention is not supported")
    layer_types = text.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types) and (
            architecture != "qwen2" or text.get("use_sliding_window")):
        raise UnsupportedConfigError(f"field 'layer_types' = {layer_types}: only full attention is supported")
    if text.get("rope_interleaved"):
        raise UnsupportedConfigError(
            f"field 'rope_interleaved' = {text['rope_interleaved']!r}: rotax rotates split halves "
            "(HF's rotate_half), not interleaved pairs")
    if text.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedConfigError(
            f"field 'partial_rotary_factor' = {text['partial_rotary_factor']}: only 1.0 is supported")


def _rope(text: dict) -> tuple[float, RopeScaling | None]:
    # transformers 5 keeps everything in `rope_parameters`; 4.x used `rope_theta` + `rope_scaling`.
    params = text.get("rope_parameters") or {}
    legacy = text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta", 10000.0))
    merged = {**legacy, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        field = "rope_parameters.rope_type" if params else "rope_scaling.rope_type"
        raise UnsupportedConfigError(
            f"field '{field}' = {rope_type!r}: supported RoPE types are {_SUPPORTED_ROPE_TYPES}")
    if rope_type == "default":
        return float(theta), None
    try:
        scaling = RopeScaling(
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        )
    except KeyError as err:
        raise UnsupportedConfigError(f"llama3 RoPE scaling is missing field {err.args[0]!r}") from err
    return float(theta), scaling


def _token_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _text_fields(text: dict, architecture: str) -> dict:
    try:
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        hf_layers = int(text["num_hidden_layers"])
        vocab = int(text["vocab_size"])
        intermediate = int(text["intermediate_size"])
    except KeyError as err:
        raise UnsupportedConfigError(f"config is missing required field {err.args[0]!r}") from err
    head_dim = text.get("head_dim") or hidden // heads
    theta, scaling = _rope(text)
    cross = tuple(int(i) for i in text.get("cross_attention_layers") or ())
    if architecture != "mllama" and cross:
        raise UnsupportedConfigError(f"field 'cross_attention_layers' = {list(cross)} outside an Mllama model")
    layer_ids = tuple(i for i in range(hf_layers) if i not in set(cross))
    bias = bool(text.get("attention_bias", False))
    if architecture == "qwen2":
        if "attention_bias" in text and not text["attention_bias"]:
            raise UnsupportedConfigError("field 'attention_bias' = False: Qwen2 always has q/k/v biases")
        qkv_bias, out_bias = True, False
    else:
        qkv_bias, out_bias = bias, bias
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=len(layer_ids),
        num_hidden_layers=hf_layers,
        layer_ids=layer_ids,
        cross_attention_layers=cross,
        num_attention_heads=heads,
        num_key_value_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(text.get("max_position_embeddings", 8192)),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        output_bias=out_bias,
        embed_vocab_size=vocab + 8 if architecture == "mllama" else vocab,
        eos_token_ids=_token_ids(text.get("eos_token_id")),
        pad_token_id=text.get("pad_token_id"),
        bos_token_id=text.get("bos_token_id"),
    )
