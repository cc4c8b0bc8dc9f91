"""ModelConfig from the public config.json files of the checkpoints users bring (typed in here
as data, as their model cards publish them): bookkeeping keys are ignored, the decoder's
numbers come out right, and fields that change the arithmetic rotax lacks are refused by name
and value."""

import copy

import pytest

from rotax.models.config import ModelConfig, RopeScaling, UnsupportedConfigError

LLAMA3_ROPE_32 = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}
LLAMA3_ROPE_8 = dict(LLAMA3_ROPE_32, factor=8.0)

LLAMA_3_2_1B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": LLAMA3_ROPE_32, "rope_theta": 500000.0,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0",
    "use_cache": True, "vocab_size": 128256,
}
LLAMA_3_2_3B_INSTRUCT = dict(LLAMA_3_2_1B_INSTRUCT, head_dim=128, hidden_size=3072, num_attention_heads=24,
                             num_hidden_layers=28)
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": LLAMA3_ROPE_8, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0", "use_cache": True,
    "vocab_size": 128256,
}
_GENERATION_DEFAULTS_4X = {  # every PretrainedConfig of transformers 4.x wrote these
    "_name_or_path": "", "add_cross_attention": False, "architectures": None, "bad_words_ids": None,
    "begin_suppress_tokens": None, "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None,
    "decoder_start_token_id": None, "diversity_penalty": 0.0, "do_sample": False, "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0, "exponential_decay_length_penalty": None, "finetuning_task": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False, "is_encoder_decoder": False, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0, "max_length": 20, "min_length": 0, "no_repeat_ngram_size": 0,
    "num_beam_groups": 1, "num_beams": 1, "num_return_sequences": 1, "output_attentions": False,
    "output_hidden_states": False, "output_scores": False, "prefix": None, "problem_type": None,
    "pruned_heads": {}, "remove_invalid_values": False, "repetition_penalty": 1.0, "return_dict": True,
    "return_dict_in_generate": False, "sep_token_id": None, "suppress_tokens": None,
    "task_specific_params": None, "temperature": 1.0, "tf_legacy_loss": False, "tie_encoder_decoder": False,
    "tokenizer_class": None, "top_k": 50, "top_p": 1.0, "torchscript": False, "typical_p": 1.0,
    "use_bfloat16": False,
}
LLAMA_3_2_11B_VISION = {
    "architectures": ["MllamaForConditionalGeneration"], "image_token_index": 128256, "model_type": "mllama",
    "text_config": dict(
        _GENERATION_DEFAULTS_4X, bos_token_id=128000, cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
        dropout=0, eos_token_id=128001, hidden_act="silu", hidden_size=4096, initializer_range=0.02,
        intermediate_size=14336, max_position_embeddings=131072, model_type="mllama_text_model",
        num_attention_heads=32, num_hidden_layers=40, num_key_value_heads=8, pad_token_id=128004,
        rms_norm_eps=1e-05, rope_scaling=LLAMA3_ROPE_8, rope_theta=500000.0, tie_word_embeddings=False,
        torch_dtype="bfloat16", use_cache=True, vocab_size=128256),
    "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0",
    "vision_config": {"hidden_size": 1280, "image_size": 560, "num_hidden_layers": 32,
                      "model_type": "mllama_vision_model", "patch_size": 14},
}
QWEN2_5_0_5B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936,
}
QWEN2_5_7B_INSTRUCT = dict(QWEN2_5_0_5B_INSTRUCT, hidden_size=3584, intermediate_size=18944,
                           max_window_layers=28, num_attention_heads=28, num_hidden_layers=28,
                           num_key_value_heads=4, sliding_window=131072, tie_word_embeddings=False,
                           vocab_size=152064)
SMOLLM2_135M_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
    "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
    "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
    "use_cache": True, "vocab_size": 49152,
}
# The same model as transformers 5 writes it after a GGUF import (rotax import-gguf), with the
# keys the issue reported: "_model_name_or_path" and "unk_token_id".
SMOLLM2_AS_WRITTEN_BY_TRANSFORMERS_5 = {
    "_model_name_or_path": "/some/dir", "architectures": ["LlamaForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02, "intermediate_size": 1536,
    "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "transformers_version": "5.24.0", "unk_token_id": 0, "use_cache": True,
    "vocab_size": 49152,
}

# name -> (config, expected fields); the numbers are read off the model cards, not the parser
EXPECTED = {
    "Llama-3.2-1B-Instruct": (LLAMA_3_2_1B_INSTRUCT, dict(
        architecture="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), tie_word_embeddings=True, attention_bias=False,
        eos_token_ids=(128001, 128008, 128009), rms_norm_eps=1e-5, max_position_embeddings=131072)),
    "Llama-3.2-3B-Instruct": (LLAMA_3_2_3B_INSTRUCT, dict(
        architecture="llama", hidden_size=3072, num_layers=28, num_attention_heads=24, num_key_value_heads=8,
        head_dim=128, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), tie_word_embeddings=True)),
    "Llama-3.1-8B": (LLAMA_3_1_8B, dict(
        architecture="llama", hidden_size=4096, intermediate_size=14336, num_layers=32, head_dim=128,
        num_key_value_heads=8, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), tie_word_embeddings=False,
        eos_token_ids=(128001,))),
    "Llama-3.2-11B-Vision": (LLAMA_3_2_11B_VISION, dict(
        architecture="mllama", hidden_size=4096, num_layers=32, num_hidden_layers=40,
        cross_attention_layers=(3, 8, 13, 18, 23, 28, 33, 38),
        layer_ids=tuple(i for i in range(40) if i not in (3, 8, 13, 18, 23, 28, 33, 38)),
        embed_vocab_size=128264, vocab_size=128256, head_dim=128, pad_token_id=128004,
        hf_prefix="language_model.", rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192))),
    "Qwen2.5-0.5B-Instruct": (QWEN2_5_0_5B_INSTRUCT, dict(
        architecture="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
        num_attention_heads=14, num_key_value_heads=2, head_dim=64, rope_theta=1e6, rope_scaling=None,
        attention_bias=True, output_bias=False, tie_word_embeddings=True, rms_norm_eps=1e-6,
        eos_token_ids=(151645,))),
    "Qwen2.5-7B-Instruct": (QWEN2_5_7B_INSTRUCT, dict(
        architecture="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_attention_heads=28,
        num_key_value_heads=4, head_dim=128, attention_bias=True, tie_word_embeddings=False)),
    "SmolLM2-135M-Instruct": (SMOLLM2_135M_INSTRUCT, dict(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0, rope_scaling=None,
        tie_word_embeddings=True, eos_token_ids=(2,), pad_token_id=2)),
    "SmolLM2 written by transformers 5": (SMOLLM2_AS_WRITTEN_BY_TRANSFORMERS_5, dict(
        architecture="llama", num_layers=30, head_dim=64, rope_theta=100000.0, rope_scaling=None,
        tie_word_embeddings=True)),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_public_configs_parse(name):
    hf, expected = EXPECTED[name]
    cfg = ModelConfig.from_hf_dict(copy.deepcopy(hf))
    got = {field: getattr(cfg, field) for field in expected}
    assert got == expected


@pytest.mark.parametrize("change,match", [
    ({"mlp_bias": True}, r"'mlp_bias' = True"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_type.*'yarn'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_type.*'dynamic'"),
    ({"sliding_window": 4096}, r"'sliding_window' = 4096"),
    ({"rope_interleaved": True}, r"'rope_interleaved' = True"),
    ({"hidden_act": "gelu_pytorch_tanh"}, r"'hidden_act' = 'gelu_pytorch_tanh'"),
    ({"partial_rotary_factor": 0.5}, r"'partial_rotary_factor' = 0.5"),
    ({"quantization_config": {"quant_method": "gguf"}}, r"'quantization_config'.*'gguf'"),
    ({"attn_logit_softcapping": 50.0}, r"'attn_logit_softcapping' = 50.0"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, r"'layer_types'.*sliding_attention"),
])
def test_arithmetic_changes_are_refused_by_name_and_value(change, match):
    hf = dict(copy.deepcopy(LLAMA_3_2_1B_INSTRUCT), **change)
    with pytest.raises(UnsupportedConfigError, match=match):
        ModelConfig.from_hf_dict(hf)


def test_qwen_sliding_window_switched_on_is_refused():
    hf = dict(QWEN2_5_7B_INSTRUCT, use_sliding_window=True)
    with pytest.raises(UnsupportedConfigError, match=r"'use_sliding_window' = True \(sliding_window=131072\)"):
        ModelConfig.from_hf_dict(hf)


def test_bookkeeping_keys_change_nothing():
    plain = ModelConfig.from_hf_dict(dict(SMOLLM2_135M_INSTRUCT))
    noisy = ModelConfig.from_hf_dict(dict(
        SMOLLM2_135M_INSTRUCT, _model_name_or_path="x", _attn_implementation="sdpa", unk_token_id=0,
        mask_token_id=4, additional_special_token_ids=[5, 6], transformers_version="5.24.0", use_cache=False,
        initializer_range=0.5, output_router_logits=False, **_GENERATION_DEFAULTS_4X))
    assert noisy == plain
