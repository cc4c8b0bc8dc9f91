"""Benchmark: one SFT train step (forward, masked CE, backward, clip, AdamW) in tokens/s.

rotax's jitted step vs transformers' LlamaForCausalLM + torch.optim.AdamW on the same weights
and the same batch, in the same process, with the same thread count (CPU affinity + XLA's and
torch's thread settings), interleaved repeats, medians. Also reports model FLOPs utilization
(MFU) against a matmul peak measured in the same run (a jitted fp32 matmul in jax).

    python scripts/bench_sft.py [--quick] [--threads N] [--repeats R] [--model HF_DIR]

``--model`` trains that HF directory's weights (e.g. SmolLM2-135M) on a random batch instead of
the synthetic config. The last line is one JSON object: {"bench": "sft", "ratio":
rotax/baseline (wall time), "cpu_time_ratio": (CPU time, robust to other load), "better":
"higher", "rotax": tok/s, "baseline": tok/s, "unit": "tokens/s", "config": {...}, "mfu": {...}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from _bench_threads import pin_threads  # called in main() before jax/torch are imported
from _bench_timing import Clock, forward_flops, matmul_peak, mfu, model_config

FULL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
            num_attention_heads=8, num_key_value_heads=8, batch=8, seq=256)
QUICK = dict(vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=4, batch=4, seq=128)
HYPER = dict(lr=1e-6, betas=(0.9, 0.98), eps=1e-7, weight_decay=0.0, max_grad_norm=1.0)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, finishes in well under a minute")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per contender")
    parser.add_argument("--model", default=None, help="an HF model directory to train instead")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    return parser.parse_args()


def model_flops_per_step(c: dict, answer_tokens: int) -> float:
    """Training FLOPs of one step that the masked SFT loss needs: 3 × the forward FLOPs of the
    decoder on all tokens (PaLM's count, attention included) + the LM head on the answer
    tokens only. Both contenders are measured against this count (HF also runs the head on
    prompt tokens)."""
    return 3 * forward_flops(c, c["batch"] * c["seq"], c["seq"], answer_tokens)


def main() -> None:
    args = parse_args()
    c = dict(QUICK if args.quick else FULL)
    if args.model:
        c = {**{k: v for k, v in model_config(args.model).items() if k in FULL or k == "head_dim"},
             "batch": 4 if args.quick else 8, "seq": 128 if args.quick else 256}
    c.update({k: v for k, v in (("batch", args.batch), ("seq", args.seq)) if v})
    repeats = args.repeats or (3 if args.quick else 5)
    pin_threads(args.threads)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import rotax
    from rotax.sft import step as sft
    from rotax.sft.data import Batch
    from rotax.training.train_state import abstract_train_state, init_train_state, make_optimizer, optimizer_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    else:
        hf_cfg = LlamaConfig(**{k: v for k, v in c.items() if k not in ("batch", "seq")},
                             max_position_embeddings=c["seq"], tie_word_embeddings=False,
                             bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(hf_cfg).float().train()
    params_count = sum(p.numel() for p in model.parameters())

    # The same batch for both: prompt tokens then answer tokens (loss on the last quarter).
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, c["vocab_size"], (c["batch"], c["seq"]), dtype=np.int32)
    mask = np.zeros_like(tokens, np.float32)
    mask[:, -c["seq"] // 4:] = 1.0
    attention = np.ones_like(tokens, bool)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        cfg, params = rotax.load_hf(tmp, dtype="float32", compute_dtype="float32")
    section = optimizer_config()
    section.update(learning_rate=HYPER["lr"], warmup_steps=0, max_grad_norm=HYPER["max_grad_norm"])
    optimizer, schedule = make_optimizer(section, 1000)
    mesh = rotax.make_mesh((1, 1, 1))
    abstract = abstract_train_state(params, optimizer, mesh)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    state = init_train_state(params, optimizer, 0, shardings)
    del params
    step = sft.make_train_step(cfg, optimizer, schedule, mesh, shardings)
    batch = jax.device_put(sft.prepare_batch(Batch(tokens, mask, attention)))

    torch_opt = torch.optim.AdamW(model.parameters(), lr=HYPER["lr"], betas=HYPER["betas"],
                                  eps=HYPER["eps"], weight_decay=HYPER["weight_decay"])
    input_ids = torch.as_tensor(tokens, dtype=torch.long)
    labels = torch.where(torch.as_tensor(mask) > 0, input_ids, torch.full_like(input_ids, -100))
    attention_t = torch.as_tensor(attention.astype(np.int64))

    def rotax_step():
        nonlocal state
        state, metrics = step(state, batch)
        return float(metrics["loss"])

    def torch_step():
        torch_opt.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, attention_mask=attention_t, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
        torch_opt.step()
        return loss.item()

    t = time.perf_counter()
    first_losses = (rotax_step(), torch_step())
    warmup_seconds = time.perf_counter() - t
    clock = Clock("rotax", "baseline")
    for _ in range(repeats):
        for name, fn in (("rotax", rotax_step), ("baseline", torch_step)):
            with clock(name):
                fn()
    peak = matmul_peak()
    tokens_per_step = c["batch"] * c["seq"]
    rates = {k: tokens_per_step / clock.median(k) for k in clock.wall}
    cpu_rates = {k: tokens_per_step / clock.median(k, "cpu") for k in clock.wall}
    answer_tokens = int(mask[:, 1:].sum())
    flops = model_flops_per_step(c, answer_tokens)
    mfus = {k: mfu(flops, clock, k, peak) for k in clock.wall}
    print(f"params {params_count / 1e6:.1f}M, batch {c['batch']}x{c['seq']}, threads {args.threads}, "
          f"first-step losses rotax {first_losses[0]:.4f} / torch {first_losses[1]:.4f} "
          f"(compile+warm-up {warmup_seconds:.1f} s)", file=sys.stderr)
    for k in clock.wall:
        print(f"{k}: step seconds wall {[round(x, 3) for x in clock.wall[k]]} cpu "
              f"{[round(x, 3) for x in clock.cpu[k]]}", file=sys.stderr)
    print(f"matmul peak {peak['wall']:.1f} GFLOP/s wall, {peak['cpu']:.1f} per CPU second; "
          f"model {flops / 1e9:.1f} GFLOP/step; MFU {mfus}", file=sys.stderr)
    print(json.dumps({
        "bench": "sft", "ratio": round(rates["rotax"] / rates["baseline"], 3),
        "cpu_time_ratio": round(cpu_rates["rotax"] / cpu_rates["baseline"], 3), "better": "higher",
        "rotax": round(rates["rotax"], 1), "baseline": round(rates["baseline"], 1), "unit": "tokens/s",
        "config": {**c, "params_m": round(params_count / 1e6, 1), "threads": args.threads,
                   "repeats": repeats, "dtype": "float32", "answer_fraction": 0.25,
                   "quick": args.quick, "model": args.model},
        "mfu": {"rotax": mfus["rotax"], "baseline": mfus["baseline"],
                "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
                "model_gflop_per_step": round(flops / 1e9, 1),
                "flops": "3 x forward: decoder on all tokens + LM head on answer tokens"},
    }))


if __name__ == "__main__":
    main()
