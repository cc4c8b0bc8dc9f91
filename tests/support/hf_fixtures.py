"""Tiny random Hugging Face models built in code (no downloads), saved as safetensors.

Each builder returns the directory it wrote. The transformers model is the parity oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
               "rope_theta": 500000.0}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # transformers initializes norms to 1 and biases to 0; randomize everything so parity
    # tests also exercise norm weights and biases.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _save(model, out: Path, *, max_shard_size=None) -> Path:
    out = Path(out)
    kwargs = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **kwargs)
    return out


def llama(out, *, tied=False, layers=3, seed=0, rope=LLAMA3_ROPE, max_shard_size=None,
          dtype=torch.float32) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**TINY, num_hidden_layers=layers, tie_word_embeddings=tied,
                      rope_parameters=dict(rope), bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    _randomize(model, seed)
    return _save(model.to(dtype), out, max_shard_size=max_shard_size)


def qwen2(out, *, tied=True, layers=3, seed=1) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**TINY, num_hidden_layers=layers, tie_word_embeddings=tied,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    _randomize(model, seed)
    return _save(model, out)


def mllama(out, *, seed=2) -> Path:
    """Text tower of 5 layers with cross-attention layers 1 and 3, plus a tiny vision tower."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    text = dict(TINY, num_hidden_layers=5, cross_attention_layers=[1, 3], bos_token_id=1,
                eos_token_id=2, pad_token_id=0, rope_parameters=dict(LLAMA3_ROPE))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                  attention_heads=2, image_size=28, patch_size=14, max_num_tiles=4,
                  vision_output_dim=64, intermediate_layers_indices=[0])
    cfg = MllamaConfig(text_config=text, vision_config=vision, image_token_index=TINY["vocab_size"] - 1)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(cfg)
    _randomize(model, seed)
    return _save(model, out)


def load_torch(path):
    """The transformers model saved at ``path``, fp32, eval mode."""
    from transformers import AutoConfig, LlamaForCausalLM, MllamaForConditionalGeneration, Qwen2ForCausalLM

    arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
    cls = {"LlamaForCausalLM": LlamaForCausalLM, "Qwen2ForCausalLM": Qwen2ForCausalLM,
           "MllamaForConditionalGeneration": MllamaForConditionalGeneration}[arch]
    return cls.from_pretrained(path, dtype=torch.float32).eval()


def torch_logits(path, tokens) -> "numpy.ndarray":
    import numpy as np

    model = load_torch(path)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long))
    return out.logits.float().numpy()
