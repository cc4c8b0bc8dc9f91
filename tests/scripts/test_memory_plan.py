"""scripts/memory_plan.py: exact parameter counts and per-device shards under rotax's rules."""

import importlib.util
import sys
from pathlib import Path

import jax
import pytest

import rotax
from rotax.models.config import ModelConfig

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "memory_plan.py"
_spec = importlib.util.spec_from_file_location("memory_plan", _SCRIPT)
memory_plan = importlib.util.module_from_spec(_spec)
sys.modules["memory_plan"] = memory_plan  # dataclasses resolve annotations through it
_spec.loader.exec_module(memory_plan)

SMALL = {
    "llama": {"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 64,
              "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "tie_word_embeddings": False},
    "qwen2_tied": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 96, "hidden_size": 64,
                   "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "tie_word_embeddings": True},
    "mllama": {"architectures": ["MllamaForConditionalGeneration"],
               "text_config": {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
                               "num_hidden_layers": 5, "cross_attention_layers": [1, 3],
                               "num_attention_heads": 4, "num_key_value_heads": 2}},
}


def _tree_count(cfg):
    return sum(x.size for x in jax.tree.leaves(rotax.param_shapes(cfg)))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_analytic_count_equals_tree_of_small_configs(name):
    cfg = ModelConfig.from_hf_dict(SMALL[name])
    assert memory_plan.analytic_param_count(cfg)["total"] == _tree_count(cfg)


def test_study_models_by_hand():
    llama = ModelConfig.from_hf_dict(memory_plan.PRESETS["llama3_2_11b_vision"])
    # 32 self-attention layers: q,o 4096^2 + k,v 1024x4096 + 3 x 14336x4096 + 2 norms
    layer = 2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096 + 2 * 4096
    by_hand = 32 * layer + (128256 + 8) * 4096 + 128256 * 4096 + 4096
    assert by_hand == 8_030_294_016
    assert memory_plan.analytic_param_count(llama)["total"] == by_hand == _tree_count(llama)
    qwen = ModelConfig.from_hf_dict(memory_plan.PRESETS["qwen2_5_7b"])
    layer = 2 * 3584 * 3584 + 2 * 512 * 3584 + (3584 + 2 * 512) + 3 * 18944 * 3584 + 2 * 3584
    by_hand = 28 * layer + 2 * 152064 * 3584 + 3584
    assert by_hand == 7_615_616_512
    assert memory_plan.analytic_param_count(qwen)["total"] == by_hand == _tree_count(qwen)


def test_per_device_shards_cover_the_model():
    """Under pure fsdp every matrix is split 8 ways; norms (and Qwen's q/k/v biases, whose only
    logical axis maps to ``tensor``) are replicated on every device."""
    llama = ModelConfig.from_hf_dict(memory_plan.PRESETS["llama3_2_11b_vision"])
    qwen = ModelConfig.from_hf_dict(memory_plan.PRESETS["qwen2_5_7b"])
    for cfg, replicated in [(llama, 32 * 2 * 4096 + 4096),
                            (qwen, 28 * 2 * 3584 + 3584 + 28 * (3584 + 2 * 512))]:
        total = memory_plan.analytic_param_count(cfg)["total"]
        per_device, _ = memory_plan.per_device_params(cfg, (1, 8, 1))
        assert per_device * 8 == total + 7 * replicated
        per_device, _ = memory_plan.per_device_params(cfg, (2, 4, 2))  # data replicates
        assert per_device * 8 >= total and per_device < total / 7


def test_plan_rows_and_cli(capsys):
    cfg = ModelConfig.from_hf_dict(memory_plan.PRESETS["llama3_2_11b_vision"])
    result = memory_plan.plan(cfg, (1, 16, 1))
    rows = {label: (sft, ppo) for label, sft, ppo in result["rows"]}
    p = result["per_device_params"]
    assert rows["Adam m + v (8 B/param)"] == (8 * p, 8 * p)
    kv = next(v for k, v in rows.items() if k.startswith("KV cache"))[1]
    # 128 episodes / 16 devices x (300 + 6 x 512 + 5 x 40 = 3572 tokens: the reference recipe's
    # 5 graded answers + the step-limit answer) x 32 layers x 2 (k, v) x 8 kv heads x 128 x 2 bytes
    assert kv == 8 * 3572 * 32 * 2 * 8 * 128 * 2
    assert memory_plan.main(["--model", "qwen2_5_7b", "--mesh", "1,8,1", "--hbm-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "7,615,616,512" in out and "share of 80 GB HBM" in out
