"""Benchmark: sampled generation with a KV cache, rotax (one jitted prefill + while_loop decode)
vs transformers ``generate`` (torch CPU), same weights, batch, prompts and thread count;
interleaved repeats, medians; compile / warm-up time reported separately. Last line: one JSON
object. ``BENCH_THREADS`` (default 1) is the number of cores: the whole process (torch and
XLA, whose CPU client keeps its own thread pool whatever the flags say) is pinned to that many
cores with ``sched_setaffinity``, and torch uses that many threads. ``--model DIR`` samples from an
HF directory's weights (e.g. SmolLM2-135M) instead of the random synthetic config. MFU is
against a matmul peak measured in the same run (``scripts/_bench_timing.py``)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _bench_models import save_random_llama
from _bench_threads import pin_threads  # before numpy/jax/torch: their pools inherit the pinning
from _bench_timing import Clock, forward_flops, matmul_peak, mfu, model_config

THREADS = pin_threads()  # BENCH_THREADS, default 1

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
QUICK = dict(CONFIG, num_hidden_layers=2, vocab_size=8000)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 layers, vocab 8000, batch 8, 32+32 tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--model", default=None, help="an HF model directory instead of random weights")
    args = parser.parse_args()
    config = QUICK if args.quick else CONFIG
    batch, prompt_len, new = (8, 32, 32) if args.quick else (args.batch, args.prompt, args.new)
    repeats = 2 if args.quick else args.repeats

    import jax
    import torch

    import rotax
    from rotax.sampling.sampler import SamplingOptions, sample
    from tests.support.hf_fixtures import load_torch

    torch.set_num_threads(THREADS)
    if args.model:
        config = model_config(args.model)
        cfg, params = rotax.load_hf(args.model, dtype="float32")
        model = load_torch(args.model)
        n_params = sum(p.numel() for p in model.parameters())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            n_params = save_random_llama(Path(tmp), config, max_position_embeddings=2048,
                                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
            cfg, params = rotax.load_hf(tmp)
            model = load_torch(tmp)
    prompts = np.random.default_rng(0).integers(3, config["vocab_size"], (batch, prompt_len), dtype=np.int32)
    mask = np.ones_like(prompts, bool)
    options = SamplingOptions(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=new)
    t_prompts = torch.as_tensor(prompts, dtype=torch.long)
    t_mask = torch.ones_like(t_prompts)
    seed = iter(range(10_000))

    clock = Clock("rotax", "baseline")

    def run_rotax():
        with clock("rotax"):
            out = sample(cfg, params, prompts, mask, jax.random.key(next(seed)), options, eos_ids=())
            jax.block_until_ready(out)
        assert int(out.lengths.min()) == new

    def run_torch():
        with clock("baseline"), torch.no_grad():
            out = model.generate(t_prompts, attention_mask=t_mask, do_sample=args.temperature > 0,
                                 temperature=args.temperature or None, top_p=args.top_p,
                                 top_k=args.top_k or None, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=0, eos_token_id=None)
        assert out.shape[1] == prompt_len + new

    run_rotax()  # first call: trace + compile + run
    compile_s = clock.wall["rotax"][-1]
    run_torch()
    warmup_s = clock.wall["baseline"][-1]
    clock.clear()  # keep steady-state runs only
    for _ in range(repeats):
        run_rotax()
        run_torch()
    peak = matmul_peak()
    n = batch * new
    # prefill (LM head on the last prompt token) + one token per row per step over a growing cache
    flops = (forward_flops(config, batch * prompt_len, prompt_len, batch)
             + forward_flops(config, n, prompt_len + new / 2, n))
    times = clock.wall
    rate = {k: n / clock.median(k) for k in times}
    cpu_rate = {k: n / clock.median(k, "cpu") for k in times}
    mfus = {k: mfu(flops, clock, k, peak) for k in times}
    print(f"{n_params / 1e6:.1f}M params, batch {batch}, prompt {prompt_len}, {new} new tokens, "
          f"{THREADS} thread(s), temperature {args.temperature}, top_p {args.top_p}, top_k {args.top_k}")
    print(f"rotax {rate['rotax']:.0f} tok/s (first call incl. compile {compile_s:.1f}s; runs "
          f"{', '.join(f'{t:.2f}' for t in times['rotax'])}s)")
    print(f"transformers {rate['baseline']:.0f} tok/s (warm-up {warmup_s:.1f}s; runs "
          f"{', '.join(f'{t:.2f}' for t in times['baseline'])}s)")
    print(f"per CPU second (robust to other load): rotax {cpu_rate['rotax']:.0f}, transformers "
          f"{cpu_rate['baseline']:.0f} tok/s, ratio {cpu_rate['rotax'] / cpu_rate['baseline']:.2f}; "
          f"MFU {mfus} (matmul peak {peak})")
    print(json.dumps({"bench": "generate", "ratio": rate["rotax"] / rate["baseline"],
                      "cpu_time_ratio": cpu_rate["rotax"] / cpu_rate["baseline"], "better": "higher",
                      "rotax": rate["rotax"], "baseline": rate["baseline"], "unit": "tokens/s",
                      "mfu": {**mfus, "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
                              "model_gflop": round(flops / 1e9, 2)},
                      "config": {"params": n_params, "batch": batch, "prompt": prompt_len, "new_tokens": new,
                                 "threads": THREADS, "repeats": repeats, "compile_s": compile_s,
                                 "cpu_time_ratio": cpu_rate["rotax"] / cpu_rate["baseline"],
                                 "rotax_runs_s": times["rotax"], "baseline_runs_s": times["baseline"],
                                 "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                                 "model": args.model or config}}))


if __name__ == "__main__":
    main()
