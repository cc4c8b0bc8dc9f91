"""Benchmark: forward-pass tokens/s, rotax (jit) vs transformers + torch, same config, batch,
weights and thread count, interleaved repeats, medians. Last line: one JSON object.
``BENCH_THREADS`` (default 1) is the number of cores: the whole process is pinned to that many
(``scripts/_bench_threads.py``) and torch uses that many threads. ``--model DIR`` runs an HF
directory's weights (e.g. SmolLM2-135M) instead of the random synthetic config. Wall-time and
CPU-time ratios and MFU against a matmul peak measured in the same run
(``scripts/_bench_timing.py``)."""

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
              num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True)
QUICK = dict(CONFIG, num_hidden_layers=2, vocab_size=8000)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--model", default=None, help="an HF model directory instead of random weights")
    args = parser.parse_args()
    config = QUICK if args.quick else CONFIG
    repeats = 3 if args.quick else args.repeats

    import jax
    import torch

    import rotax
    from tests.support.hf_fixtures import load_torch

    torch.set_num_threads(THREADS)
    if args.model:
        config = model_config(args.model)
        cfg, params = rotax.load_hf(args.model, dtype="float32")
        model = load_torch(args.model)
        n_params = sum(p.numel() for p in model.parameters())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            n_params = save_random_llama(Path(tmp), config, max_position_embeddings=1024)
            cfg, params = rotax.load_hf(tmp)
            model = load_torch(tmp)
    tokens = np.random.default_rng(0).integers(0, config["vocab_size"], (args.batch, args.seq), dtype=np.int32)
    t_tokens = torch.as_tensor(tokens, dtype=torch.long)

    t0 = time.perf_counter()
    jax.block_until_ready(rotax.forward(cfg, params, tokens))
    compile_s = time.perf_counter() - t0
    clock = Clock("rotax", "baseline")

    def run_rotax():
        with clock("rotax"):
            jax.block_until_ready(rotax.forward(cfg, params, tokens))

    def run_torch():
        with clock("baseline"), torch.no_grad():
            model(input_ids=t_tokens, use_cache=False)

    run_torch()  # warm-up
    clock.clear()
    for _ in range(repeats):
        run_rotax()
        run_torch()
    peak = matmul_peak()
    n = tokens.size
    flops = forward_flops(config, n, args.seq, n)  # both compute logits at every position
    rate = {k: n / clock.median(k) for k in clock.wall}
    cpu_rate = {k: n / clock.median(k, "cpu") for k in clock.wall}
    mfus = {k: mfu(flops, clock, k, peak) for k in clock.wall}
    print(f"{n_params / 1e6:.1f}M params, batch {args.batch} x {args.seq}, {THREADS} thread(s)")
    print(f"rotax {rate['rotax']:.0f} tok/s (compile {compile_s:.1f}s), transformers {rate['baseline']:.0f} tok/s; "
          f"per CPU second {cpu_rate['rotax']:.0f} vs {cpu_rate['baseline']:.0f}; MFU {mfus}; "
          f"matmul peak {peak}")
    print(json.dumps({"bench": "forward", "ratio": rate["rotax"] / rate["baseline"],
                      "cpu_time_ratio": cpu_rate["rotax"] / cpu_rate["baseline"], "better": "higher",
                      "rotax": rate["rotax"], "baseline": rate["baseline"], "unit": "tokens/s",
                      "mfu": {**mfus, "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
                              "model_gflop": round(flops / 1e9, 2)},
                      "config": {"params": n_params, "batch": args.batch, "seq": args.seq,
                                 "threads": THREADS, "repeats": repeats, "compile_s": compile_s,
                                 "model": args.model or config}}))


if __name__ == "__main__":
    main()
