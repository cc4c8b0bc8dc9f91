"""Benchmark: streamed HF load — peak host RSS / parameter bytes, and load time vs a plain
safetensors read of the same files (measured in the same run, each in a fresh process).

Writes a synthetic Llama-3.2-1B-shaped bf16 checkpoint (random weights, several shards) to a
temp dir. Last line: one JSON object (see DESIGN.md, "Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FULL = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)
QUICK = dict(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)


def write_checkpoint(out: Path, shape: dict, shard_bytes: int) -> int:
    """Random bf16 Llama weights in HF layout, split into shards; returns parameter bytes."""
    import torch
    from safetensors.torch import save_file

    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    tensors = [("model.embed_tokens.weight", (v, h)), ("model.norm.weight", (h,))]
    for layer in range(shape["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        tensors += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                    (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                    (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                    (p + "post_attention_layernorm.weight", (h,))]
    gen = torch.Generator().manual_seed(0)
    shards, current, size, total = [], {}, 0, 0
    for name, shp in tensors:
        t = (0.02 * torch.randn(shp, generator=gen)).to(torch.bfloat16)
        if current and size + t.numel() * 2 > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.numel() * 2
        total += t.numel() * 2
    shards.append(current)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = dict(shape, architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5,
                  max_position_embeddings=131072, hidden_act="silu", bos_token_id=128000,
                  eos_token_id=128001, torch_dtype="bfloat16",
                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                  rope_theta=500000.0)
    (out / "config.json").write_text(json.dumps(config))
    return total


CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp

def high_water_mark():
    # VmHWM is per address space (reset by exec), unlike ru_maxrss, which Linux carries over
    # from the forking parent.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

jax.devices()
base = high_water_mark()
mode, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "rotax":
    import rotax
    cfg, params = rotax.load_hf(path)
    leaves = jax.tree.leaves(params)
    jax.block_until_ready(leaves)
else:  # plain safetensors read of every file into arrays, then onto the device
    from pathlib import Path
    from safetensors.flax import load_file
    leaves = []
    for f in sorted(Path(path).glob("*.safetensors")):
        leaves += list(load_file(str(f)).values())
    jax.block_until_ready(leaves)
seconds = time.perf_counter() - t0
nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
peak = high_water_mark()
print(json.dumps({"seconds": seconds, "peak_rss": peak, "base_rss": base, "param_bytes": nbytes}))
"""


def run_child(mode: str, path: Path) -> dict:
    env = {"OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    import os

    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--write":
        print(write_checkpoint(Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small model, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        # written by a child process, so this process stays small while the loads are measured
        shard_bytes = (64 << 20) if args.quick else (512 << 20)
        total = json.loads(subprocess.run(
            [sys.executable, __file__, "--write", str(path), json.dumps(shape), str(shard_bytes)],
            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        results = {"rotax": [], "baseline": []}
        for _ in range(repeats):  # interleaved
            for mode in ("rotax", "baseline"):
                results[mode].append(run_child(mode, path))
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items()}
    peak = max(r["peak_rss"] for r in results["rotax"])
    base_peak = max(r["peak_rss"] for r in results["baseline"])
    rss_base = statistics.median(r["base_rss"] for r in results["rotax"])
    print(f"checkpoint: {total / 1e9:.2f} GB bf16")
    print(f"rotax load {med['rotax']:.2f}s  peak RSS {peak / 1e9:.2f} GB  (runtime alone {rss_base / 1e9:.2f} GB)")
    print(f"plain safetensors read {med['baseline']:.2f}s  peak RSS {base_peak / 1e9:.2f} GB")
    print(json.dumps({"bench": "load", "ratio": med["rotax"] / med["baseline"], "better": "lower",
                      "rotax": med["rotax"], "baseline": med["baseline"], "unit": "s",
                      "peak_rss_over_param_bytes": peak / total,
                      "peak_rss_minus_runtime_over_param_bytes": (peak - rss_base) / total,
                      "baseline_peak_rss_over_param_bytes": base_peak / total,
                      "config": {"shape": shape, "param_bytes": total, "repeats": repeats}}))


if __name__ == "__main__":
    main()
