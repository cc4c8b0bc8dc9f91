"""Random-weight Hugging Face models for the benchmarks (no downloads)."""

from __future__ import annotations

from pathlib import Path


def save_random_llama(path: Path, config: dict, **hf_config) -> int:
    """``LlamaForCausalLM(LlamaConfig(**config, **hf_config))`` initialized under torch seed 0,
    saved at ``path`` as an HF directory (safetensors); returns its parameter count. torch is
    imported here, after the caller has pinned its threads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config, **hf_config))
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())
