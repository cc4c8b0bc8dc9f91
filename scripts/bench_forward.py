"""Benchmark: forward-pass tokens/s, rotax (jit) vs transformers + torch, same config, batch,
weights and thread count, interleaved repeats, medians. Last line: one JSON object.
``BENCH_THREADS`` (default 1) is the number of cores: the whole process is pinned to that many
(``scripts/_bench_threads.py``) and torch uses that many threads."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench_models import save_random_llama
from _bench_threads import pin_threads  # before numpy/jax/torch: their pools inherit the pinning

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
    args = parser.parse_args()
    config = QUICK if args.quick else CONFIG
    repeats = 3 if args.quick else args.repeats

    import jax
    import torch

    import rotax
    from tests.support.hf_fixtures import load_torch

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        n_params = save_random_llama(Path(tmp), config, max_position_embeddings=1024)
        cfg, params = rotax.load_hf(tmp)
        model = load_torch(tmp)
    tokens = np.random.default_rng(0).integers(0, config["vocab_size"], (args.batch, args.seq), dtype=np.int32)
    t_tokens = torch.as_tensor(tokens, dtype=torch.long)

    t0 = time.perf_counter()
    jax.block_until_ready(rotax.forward(cfg, params, tokens))
    compile_s = time.perf_counter() - t0

    def run_rotax():
        t = time.perf_counter()
        jax.block_until_ready(rotax.forward(cfg, params, tokens))
        return time.perf_counter() - t

    def run_torch():
        t = time.perf_counter()
        with torch.no_grad():
            model(input_ids=t_tokens, use_cache=False)
        return time.perf_counter() - t

    run_torch()  # warm-up
    times = {"rotax": [], "baseline": []}
    for _ in range(repeats):
        times["rotax"].append(run_rotax())
        times["baseline"].append(run_torch())
    n = tokens.size
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    print(f"{n_params / 1e6:.1f}M params, batch {args.batch} x {args.seq}, {THREADS} thread(s)")
    print(f"rotax {rate['rotax']:.0f} tok/s (compile {compile_s:.1f}s), transformers {rate['baseline']:.0f} tok/s")
    print(json.dumps({"bench": "forward", "ratio": rate["rotax"] / rate["baseline"], "better": "higher",
                      "rotax": rate["rotax"], "baseline": rate["baseline"], "unit": "tokens/s",
                      "config": {"params": n_params, "batch": args.batch, "seq": args.seq,
                                 "threads": THREADS, "repeats": repeats, "compile_s": compile_s,
                                 "model": config}}))


if __name__ == "__main__":
    main()
