"""Per-device memory plan for full-parameter SFT and PPO on a (data, fsdp, tensor) mesh.

Counts parameters exactly from a ModelConfig (built with ``ModelConfig.from_hf_dict``) and
places every leaf with rotax's own sharding rules (``rotax.runtime.sharding.param_shardings`` on an
abstract mesh, so no devices are needed); activations, logits and the KV cache are estimates
from the formulas printed next to them (see docs/scaling.md).

    python scripts/memory_plan.py --model llama3_2_11b_vision --mesh 1,16,1 --hbm-gb 95
    python scripts/memory_plan.py --model /data/Qwen2.5-7B-Instruct --mesh 1,8,1 --hbm-gb 80
    python scripts/memory_plan.py --docs      # every table of docs/scaling.md

``--model`` is a preset name or an HF directory / config.json (only config.json is read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import jax
from jax.sharding import AbstractMesh, AxisType

from rotax.runtime import sharding as sharding_lib
from rotax.models.config import ModelConfig
from rotax.models.decoder import param_shapes

GB = 1e9  # decimal gigabytes, as accelerator HBM is quoted

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

#: HF config dicts with the dimensions of SPEC §4 (enough for ModelConfig.from_hf_dict).
PRESETS = {
    "llama3_2_11b_vision": {
        "architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama",
        "text_config": {
            "model_type": "mllama_text_model", "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 40, "num_attention_heads": 32,
            "num_key_value_heads": 8, "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
            "rms_norm_eps": 1e-5, "rope_parameters": dict(_LLAMA3_ROPE), "tie_word_embeddings": False,
            "max_position_embeddings": 131072, "eos_token_id": [128001, 128008, 128009]},
    },
    "qwen2_5_7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "max_position_embeddings": 32768,
        "eos_token_id": 151645},
    "llama3_2_1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-5,
        "rope_parameters": {**_LLAMA3_ROPE, "factor": 32.0}, "tie_word_embeddings": True,
        "max_position_embeddings": 131072, "eos_token_id": [128001, 128008, 128009]},
    "qwen2_5_0_5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "max_position_embeddings": 32768,
        "eos_token_id": 151645},
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """Batch and length assumptions. SFT: ``sft_batch`` sequences of prompt + answer tokens
    per step in ``sft_grad_accum`` micro-batches.
    PPO: rollouts of ``rollout_batch`` parallel episodes whose context grows over ``turns``
    attempts (prompt + answers of up to ``ppo_answer_tokens`` + failure feedback); updates on
    micro-batches of ``ppo_microbatch`` full-length contexts."""

    sft_batch: int = 64
    sft_grad_accum: int = 1
    prompt_tokens: int = 300
    answer_tokens: int = 256
    ppo_answer_tokens: int = 512
    turns: int = 6  # 5 graded attempts + the step-limit answer of the reference recipe
    feedback_tokens: int = 40
    rollout_batch: int = 128
    ppo_microbatch: int = 16
    kl_reference: bool = False

    @property
    def sft_length(self) -> int:
        return self.prompt_tokens + self.answer_tokens

    @property
    def episode_length(self) -> int:
        return (self.prompt_tokens + self.turns * self.ppo_answer_tokens
                + (self.turns - 1) * self.feedback_tokens)


# ---------------------------------------------------------------- parameters


def analytic_param_count(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by group, from the config's dimensions alone (no tree): embed, lm_head,
    attention, mlp, norms, total."""
    h, L = cfg.hidden_size, cfg.num_layers
    attention = h * cfg.q_size + 2 * h * cfg.kv_size + cfg.q_size * h
    if cfg.attention_bias:
        attention += cfg.q_size + 2 * cfg.kv_size
    if cfg.output_bias:
        attention += h
    counts = {
        "embed": cfg.embed_vocab_size * h,
        "lm_head": 0 if cfg.tie_word_embeddings else cfg.vocab_size * h,
        "attention": L * attention,
        "mlp": L * 3 * h * cfg.intermediate_size,
        "norms": L * 2 * h + h,
    }
    counts["total"] = sum(counts.values())
    return counts


def value_head_params(cfg: ModelConfig) -> int:
    """The study's value head h -> h/4 -> h/8 -> 1 (weights and biases)."""
    h = cfg.hidden_size
    return h * (h // 4) + h // 4 + (h // 4) * (h // 8) + h // 8 + h // 8 + 1


def abstract_mesh(shape) -> AbstractMesh:
    return AbstractMesh(tuple(shape), sharding_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def per_device_params(cfg: ModelConfig, mesh_shape) -> tuple[int, int]:
    """``(elements per device, elements of the largest stacked layer slice per device)`` of
    the canonical tree under rotax's sharding rules on ``mesh_shape``."""
    shapes = param_shapes(cfg)
    shardings = sharding_lib.param_shardings(shapes, abstract_mesh(mesh_shape))
    total = 0
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(shapes)[0],
                                      jax.tree.leaves(shardings)):
        total += math.prod(sharding.shard_shape(leaf.shape))
    # one layer all-gathered over fsdp (still split over tensor) is what a scan step touches
    t = mesh_shape[2]
    per_layer = (analytic_param_count(cfg)["attention"] + analytic_param_count(cfg)["mlp"]) // cfg.num_layers
    return total, math.ceil(per_layer / t)


# ---------------------------------------------------------------- memory rows


def _activation_bytes(cfg: ModelConfig, batch_per_device: float, length: int, t: int) -> dict[str, float]:
    """Training activations with per-layer remat (bf16 compute, fp32 attention scores/logits)."""
    b, S, h = batch_per_device, length, cfg.hidden_size
    saved = cfg.num_layers * b * S * h * 2
    per_token = 6 * h + (2 * cfg.q_size + 2 * cfg.kv_size + 3 * cfg.intermediate_size) / t
    layer = b * S * per_token * 2 + b * (cfg.num_attention_heads / t) * S * S * (4 + 2)
    logits = b * S * (cfg.vocab_size / t) * 4 * 3
    return {"remat": saved, "layer": layer, "logits": logits}


def plan(cfg: ModelConfig, mesh_shape, workload: Workload = Workload()) -> dict:
    """Every number of the memory table for ``cfg`` on ``mesh_shape``.

    ``rows`` is a list of ``(label, sft_bytes, ppo_bytes)`` per device (None = not used)."""
    d, f, t = mesh_shape
    counts = analytic_param_count(cfg)
    p_dev, layer_dev = per_device_params(cfg, mesh_shape)
    batch_ways = d * f
    sft_micro = workload.sft_batch / workload.sft_grad_accum / batch_ways
    ppo_micro = workload.ppo_microbatch / batch_ways
    rollouts = workload.rollout_batch / batch_ways
    T = workload.episode_length
    sft_act = _activation_bytes(cfg, sft_micro, workload.sft_length, t)
    ppo_act = _activation_bytes(cfg, ppo_micro, T, t)
    kv_per_token = cfg.num_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    kv_split = t if cfg.num_key_value_heads % t == 0 else 1
    rows = [
        ("fp32 master params (4 B/param)", 4 * p_dev, 4 * p_dev),
        ("Adam m + v (8 B/param)", 8 * p_dev, 8 * p_dev),
        ("fp32 gradients (4 B/param)", 4 * p_dev, 4 * p_dev),
        ("fp32 gradient accumulator (micro-batches; 4 B/param)",
         4 * p_dev if workload.sft_grad_accum > 1 else 0, 4 * p_dev),
        ("FSDP working set: 2 gathered bf16 layers + 1 layer of fp32 grads",
         8 * layer_dev, 8 * layer_dev),
        ("value head, fp32 + Adam + grads", None, 16 * value_head_params(cfg)),
        ("bf16 copy of the weights for rollouts (2 B/param)", None, 2 * p_dev),
        ("frozen KL reference, bf16 (option)", None, 2 * p_dev if workload.kl_reference else 0),
        ("KV cache of the rollout batch, bf16", None, rollouts * T * kv_per_token / kv_split),
        ("remat residuals: L x b x S x h, bf16", sft_act["remat"], ppo_act["remat"]),
        ("one layer recomputed: projections, MLP, fp32 scores", sft_act["layer"], ppo_act["layer"]),
        ("logits, log-softmax, their grad: 3 x b x S x V/t x 4 B", sft_act["logits"], ppo_act["logits"]),
    ]
    sft_total = sum(r[1] for r in rows if r[1] is not None)
    ppo_total = sum(r[2] for r in rows if r[2] is not None)
    return {
        "model": cfg, "mesh": tuple(mesh_shape), "counts": counts, "per_device_params": p_dev,
        "value_head": value_head_params(cfg), "kv_bytes_per_token": kv_per_token,
        "rows": rows, "sft_total": sft_total, "ppo_total": ppo_total, "workload": workload,
        "sequences_per_device": {"sft micro-batch": sft_micro, "ppo micro-batch": ppo_micro,
                                 "rollout episodes": rollouts},
        "lengths": (workload.sft_length, T),
    }


# ---------------------------------------------------------------- formatting


def _gb(x: float | None) -> str:
    return "–" if x is None else f"{x / GB:,.2f}"


def format_params(result: dict, name: str) -> str:
    c = result["counts"]
    d, f, t = result["mesh"]
    rows = [f"| {name} | parameters | fp32 GB |", "|---|---:|---:|"]
    for key in ("embed", "lm_head", "attention", "mlp", "norms", "total"):
        rows.append(f"| {key} | {c[key]:,} | {_gb(4 * c[key])} |")
    rows.append(f"| per device, mesh {result['mesh']} (fsdp x tensor = {f * t}) | "
                f"{result['per_device_params']:,} | {_gb(4 * result['per_device_params'])} |")
    return "\n".join(rows)


def format_memory(result: dict, hbm_gb: float | None = None) -> str:
    seq = result["sequences_per_device"]
    sft_len, ppo_len = result["lengths"]
    lines = [f"| per device, mesh {result['mesh']} | SFT GB | PPO GB |", "|---|---:|---:|",
             f"| tokens per sequence S | {sft_len} | {ppo_len} |",
             f"| sequences per device b (micro-batch) | {seq['sft micro-batch']:g} | "
             f"{seq['ppo micro-batch']:g} (rollouts: {seq['rollout episodes']:g}) |"]
    for label, sft, ppo in result["rows"]:
        lines.append(f"| {label} | {_gb(sft)} | {_gb(ppo)} |")
    lines.append(f"| **total** | **{_gb(result['sft_total'])}** | **{_gb(result['ppo_total'])}** |")
    if hbm_gb:
        lines.append(f"| share of {hbm_gb:g} GB HBM | {result['sft_total'] / GB / hbm_gb:.0%} | "
                     f"{result['ppo_total'] / GB / hbm_gb:.0%} |")
    if any(x < 1 or x != int(x) for x in seq.values()):
        lines.append("\nWarning: a batch does not divide over data x fsdp; change the batch or "
                     "the mesh.")
    return "\n".join(lines)


def load_model_config(name_or_path: str) -> tuple[str, ModelConfig]:
    if name_or_path in PRESETS:
        return name_or_path, ModelConfig.from_hf_dict(PRESETS[name_or_path])
    path = Path(name_or_path)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise SystemExit(f"--model {name_or_path!r}: not a preset ({', '.join(PRESETS)}) "
                         f"and no config.json there")
    return path.name, ModelConfig.from_hf_dict(json.loads(config_file.read_text()))


#: (platform, HBM GB per device, mesh, workload changes) rows of docs/scaling.md, per model.
#: PPO micro-batches are raised to one row per device where 16 would not split.
DOC_PLANS = {
    name: [("TPU v5p-32 (16 chips)", 95, (1, 16, 1), {}),
           ("TPU v5p-64 (32 chips)", 95, (1, 32, 1), {}),
           ("TPU v6e-8 (one host)", 32, (1, 8, 1), {}),
           ("TPU v6e-8, smaller batches", 32, (1, 8, 1),
            dict(sft_grad_accum=2, ppo_microbatch=8, rollout_batch=64)),
           ("TPU v6e-16", 32, (1, 16, 1), {}),
           ("TPU v6e-16, fsdp x tensor", 32, (1, 8, 2), {}),
           ("TPU v6e-32", 32, (1, 32, 1), {}),
           ("8x H100 80 GB", 80, (1, 8, 1), {})]
    for name in ("llama3_2_11b_vision", "qwen2_5_7b")
}


def row_workload(workload: Workload, mesh, changes: dict) -> Workload:
    split = mesh[0] * mesh[1]
    changes = {"ppo_microbatch": max(workload.ppo_microbatch, split), **changes}
    return dataclasses.replace(workload, **changes)


def format_summary(name: str, cfg: ModelConfig, workload: Workload) -> str:
    lines = [f"| {name}: platform | mesh (data, fsdp, tensor) | params / device | SFT b | "
             f"PPO b | SFT GB / device | PPO GB / device | HBM GB | PPO share |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for platform, hbm, mesh, changes in DOC_PLANS[name]:
        r = plan(cfg, mesh, row_workload(workload, mesh, changes))
        seq = r["sequences_per_device"]
        lines.append(f"| {platform} | {mesh} | {r['per_device_params'] / 1e9:.3f} B | "
                     f"{seq['sft micro-batch']:g} | {seq['ppo micro-batch']:g} | "
                     f"{_gb(r['sft_total'])} | {_gb(r['ppo_total'])} | {hbm} | "
                     f"{r['ppo_total'] / GB / hbm:.0%} |")
    return "\n".join(lines)


def docs_tables(workload: Workload) -> str:
    """The tables of docs/scaling.md: parameters, one detailed plan per model, a summary."""
    out = []
    for name, rows in DOC_PLANS.items():
        _, cfg = load_model_config(name)
        platform, hbm, mesh, changes = rows[0]
        result = plan(cfg, mesh, row_workload(workload, mesh, changes))
        out.append(format_params(result, name))
        out.append(f"Per device on {platform}, mesh {mesh}:\n\n" + format_memory(result, hbm))
        out.append(format_summary(name, cfg, workload))
    return "\n\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama3_2_11b_vision",
                        help=f"preset ({', '.join(PRESETS)}) or HF directory / config.json")
    parser.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor")
    parser.add_argument("--hbm-gb", type=float, default=None, help="HBM per device, for the share row")
    for field in dataclasses.fields(Workload):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=int, default=field.default)
    parser.add_argument("--docs", action="store_true", help="print every table of docs/scaling.md")
    args = parser.parse_args(argv)
    workload = Workload(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Workload)})
    if args.docs:
        print(docs_tables(workload))
        return 0
    name, cfg = load_model_config(args.model)
    mesh = tuple(int(x) for x in args.mesh.split(","))
    if len(mesh) != 3:
        raise SystemExit("--mesh needs three integers data,fsdp,tensor")
    result = plan(cfg, mesh, workload)
    print(format_params(result, name) + "\n")
    print(format_memory(result, args.hbm_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
