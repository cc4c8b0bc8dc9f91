"""Benchmark: sampled generation with a KV cache, rotax (one jitted prefill + while_loop decode)
vs transformers ``generate`` (torch CPU), same weights, batch, prompts and thread count;
interleaved repeats, medians; compile / warm-up time reported separately. Last line: one JSON
object. ``BENCH_THREADS`` (default 1) is the number of cores: the whole process (torch and
XLA, whose CPU client keeps its own thread pool whatever the flags say) is pinned to that many
cores with ``sched_setaffinity``, and torch uses that many threads."""

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

    cpu_times = {"rotax": [], "baseline": []}

    def timed(name):
        def wrap(fn):
            def run():
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                cpu_times[name].append(time.process_time() - cpu)
                return time.perf_counter() - wall
            return run
        return wrap

    @timed("rotax")
    def run_rotax():
        out = sample(cfg, params, prompts, mask, jax.random.key(next(seed)), options, eos_ids=())
        jax.block_until_ready(out)
        assert int(out.lengths.min()) == new

    @timed("baseline")
    def run_torch():
        with torch.no_grad():
            out = model.generate(t_prompts, attention_mask=t_mask, do_sample=args.temperature > 0,
                                 temperature=args.temperature or None, top_p=args.top_p,
                                 top_k=args.top_k or None, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=0, eos_token_id=None)
        assert out.shape[1] == prompt_len + new

    compile_s = run_rotax()  # first call: trace + compile + run
    warmup_s = run_torch()
    for runs in cpu_times.values():
        runs.clear()  # keep steady-state runs only
    times = {"rotax": [], "baseline": []}
    for _ in range(repeats):
        times["rotax"].append(run_rotax())
        times["baseline"].append(run_torch())
    n = batch * new
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_rate = {k: n / statistics.median(v) for k, v in cpu_times.items()}
    print(f"{n_params / 1e6:.1f}M params, batch {batch}, prompt {prompt_len}, {new} new tokens, "
          f"{THREADS} thread(s), temperature {args.temperature}, top_p {args.top_p}, top_k {args.top_k}")
    print(f"rotax {rate['rotax']:.0f} tok/s (first call incl. compile {compile_s:.1f}s; runs "
          f"{', '.join(f'{t:.2f}' for t in times['rotax'])}s)")
    print(f"transformers {rate['baseline']:.0f} tok/s (warm-up {warmup_s:.1f}s; runs "
          f"{', '.join(f'{t:.2f}' for t in times['baseline'])}s)")
    print(f"per CPU second (robust to other load): rotax {cpu_rate['rotax']:.0f}, transformers "
          f"{cpu_rate['baseline']:.0f} tok/s, ratio {cpu_rate['rotax'] / cpu_rate['baseline']:.2f}")
    print(json.dumps({"bench": "generate", "ratio": rate["rotax"] / rate["baseline"], "better": "higher",
                      "rotax": rate["rotax"], "baseline": rate["baseline"], "unit": "tokens/s",
                      "config": {"params": n_params, "batch": batch, "prompt": prompt_len, "new_tokens": new,
                                 "threads": THREADS, "repeats": repeats, "compile_s": compile_s,
                                 "cpu_time_ratio": cpu_rate["rotax"] / cpu_rate["baseline"],
                                 "rotax_runs_s": times["rotax"], "baseline_runs_s": times["baseline"],
                                 "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                                 "model": config}}))


if __name__ == "__main__":
    main()
