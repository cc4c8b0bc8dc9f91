"""Benchmark one PPO iteration (rollout of revision episodes + scoring + update) on a ~50M-param
Llama-architecture model with random weights and the toy word-level tokenizer (no downloads).

Measures the time split (rollout = sampling + tokenization/grading on the host, scoring, update)
and compares the rollout's generated tokens/s with the jitted sampler's stand-alone rate on a
full batch of first-attempt prompts (same batch size, max_new_tokens and temperature),
interleaved repeats, medians. The ratio shows what the episode engine costs on top of the
sampler (host work, later attempts' longer prompts, partly filled batches).

    python scripts/bench_ppo.py [--quick]

The last line is one JSON object (see DESIGN.md, "Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rotax.rl import ppo  # noqa: E402
from rotax.rl import rollout
from rotax import sampling
from rotax.models import decoder  # noqa: E402
from rotax.models.config import ModelConfig  # noqa: E402
from rotax.runtime.sharding import make_mesh  # noqa: E402
from rotax.tasks.points import CompactRenderer, Rule  # noqa: E402
from rotax.io.tokenizer import encode_prompt, eos_ids  # noqa: E402
from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer  # noqa: E402
from rotax.tasks.points.environment import GeneralPointsEnvironment  # noqa: E402
from rotax.tasks.points.toy import toy_hf_config  # noqa: E402
from rotax.training.train_state import init_train_state  # noqa: E402

FULL = dict(hidden=640, layers=10, heads=10, intermediate=1728, episodes=64, attempts=2,
            max_new_tokens=16, epochs=1, repeats=3)
#: Upper bound on a feedback turn's tokens ("You failed this trial because ..." + reasons).
FEEDBACK_TOKENS = 48
QUICK = dict(hidden=256, layers=4, heads=4, intermediate=688, episodes=16, attempts=2,
             max_new_tokens=8, epochs=1, repeats=5)


def build(setting, tokenizer):
    hf = toy_hf_config(len(tokenizer), hidden=setting["hidden"], layers=setting["layers"],
                       heads=setting["heads"], intermediate=setting["intermediate"],
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    cfg = ModelConfig.from_hf_dict(hf)
    return cfg, decoder.init_params(cfg, jax.random.PRNGKey(0))


def ppo_section(setting):
    section = ppo.default_config()
    section.update(dict(num_updates=10, episodes_per_update=setting["episodes"],
                        attempts=setting["attempts"], max_new_tokens=setting["max_new_tokens"],
                        rollout_batch_size=setting["episodes"], epochs=setting["epochs"],
                        minibatch_size=128, microbatch_size=16))
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and rollout (< 1 min)")
    args = parser.parse_args()
    setting = QUICK if args.quick else FULL
    tokenizer = build_toy_tokenizer()
    cfg, policy = build(setting, tokenizer)
    n_params = sum(x.size for x in jax.tree.leaves(policy))
    section = ppo_section(setting)
    settings = ppo.UpdateSettings.from_config(section)
    opt = ppo.OptimizerSettings.from_config(section)
    mesh = make_mesh()
    shardings = ppo.state_shardings(cfg, opt, mesh)
    params = ppo.init_ppo_params(cfg, policy, jax.random.PRNGKey(1))
    state = init_train_state(params, ppo.make_optimizer(opt), 0, shardings)
    options = sampling.SamplingOptions(temperature=section.temperature,
                                       max_new_tokens=section.max_new_tokens)
    renderer = CompactRenderer()
    env = GeneralPointsEnvironment(tokenizer, renderer, Rule.ID, section.episodes_per_update,
                                   options, attempts=section.attempts,
                                   batch_size=section.rollout_batch_size, seed=0, mesh=None)
    stop, pad = eos_ids(tokenizer, cfg), tokenizer.pad_token_id

    # the stand-alone sampler: one full batch of first-attempt prompts
    prompts = [encode_prompt(tokenizer, renderer.render_prompt(h, Rule.ID)) for h in env.hands(0)]
    tokens, mask = sampling.left_pad(prompts, pad)

    cpu_rates = {"rotax": [], "baseline": []}  # tokens per CPU second (robust to other load)

    def sampler_rate(key):
        began, cpu = time.perf_counter(), time.process_time()
        out = sampling.sample(cfg, state.params["policy"], tokens, mask, key, options,
                              eos_ids=stop, pad_id=pad)
        generated = int(jax.device_get(out.lengths).sum())
        cpu_rates["baseline"].append(generated / (time.process_time() - cpu))
        return generated / (time.perf_counter() - began)

    def play(update):
        cpu = time.process_time()
        result = env.play(cfg, state.params["policy"], jax.random.PRNGKey(update), update)
        cpu_rates["rotax"].append(result.generated_tokens / (time.process_time() - cpu))
        return result

    # warm-up: compile the sampler for every prompt bucket a later attempt may reach (a new
    # bucket costs one compile in a real run too, but only until the buckets are all seen)
    longest = tokens.shape[1] + (section.attempts - 1) * (section.max_new_tokens + FEEDBACK_TOKENS)
    bucket = tokens.shape[1]
    while bucket <= sampling.bucket_length(longest):
        padded, padded_mask = sampling.left_pad(prompts, pad, bucket)
        jax.block_until_ready(sampling.sample(cfg, state.params["policy"], padded, padded_mask,
                                              jax.random.PRNGKey(98), options, eos_ids=stop,
                                              pad_id=pad).tokens)
        bucket = sampling.bucket_length(bucket + 1)
    sampler_rate(jax.random.PRNGKey(99))
    play(99)
    for runs in cpu_rates.values():
        runs.clear()
    sampler_rates, rollout_rates, rollouts = [], [], []
    for repeat in range(setting["repeats"]):
        sampler_rates.append(sampler_rate(jax.random.PRNGKey(repeat)))
        result = play(repeat)
        rollouts.append(result)
        rollout_rates.append(result.generated_tokens / result.seconds)

    # scoring and update on the last rollout (compile timed separately)
    result = rollouts[-1]
    rows = rollout.buffer_rows(section.episodes_per_update, section.attempts, settings.microbatch_size)
    buffer = rollout.build_buffer(result.turns, rows=rows, pad_id=pad,
                                  max_new_tokens=section.max_new_tokens)
    buffer = jax.device_put(buffer, ppo.buffer_shardings(mesh))
    score_fn = ppo.make_score_fn(cfg, settings, opt, mesh, False)
    update_fn = ppo.make_update_fn(cfg, settings, opt, mesh)
    began = time.perf_counter()
    score_compiled = score_fn.lower(state.params, None, buffer).compile()
    compile_seconds = time.perf_counter() - began
    began = time.perf_counter()
    scores = jax.block_until_ready(score_compiled(state.params, None, buffer))
    scoring = time.perf_counter() - began
    began = time.perf_counter()
    update_compiled = update_fn.lower(state, buffer, scores, jnp.int32(0)).compile()
    compile_seconds += time.perf_counter() - began
    began = time.perf_counter()
    state, metrics, _ = update_compiled(state, buffer, scores, jnp.int32(0))
    jax.block_until_ready(metrics)
    update = time.perf_counter() - began

    rollout_s = statistics.median(r.seconds for r in rollouts)
    sampling_s = statistics.median(r.sample_seconds for r in rollouts)
    rotax_rate = statistics.median(rollout_rates)
    baseline = statistics.median(sampler_rates)
    config = {"params": int(n_params), "hidden": setting["hidden"], "layers": setting["layers"],
              "episodes": section.episodes_per_update, "attempts": section.attempts,
              "max_new_tokens": section.max_new_tokens, "temperature": section.temperature,
              "rollout_batch_size": section.rollout_batch_size, "epochs": section.epochs,
              "minibatch_size": section.minibatch_size, "microbatch_size": section.microbatch_size,
              "turns": len(result.turns), "generated_tokens": result.generated_tokens,
              "buffer_shape": list(buffer.tokens.shape), "repeats": setting["repeats"],
              "devices": jax.device_count(), "quick": args.quick}
    split = {"rollout": round(rollout_s, 3), "rollout_sampling": round(sampling_s, 3),
             "rollout_host": round(rollout_s - sampling_s, 3), "scoring": round(scoring, 3),
             "update": round(update, 3), "compile_scoring_update": round(compile_seconds, 3)}
    print(f"model {n_params / 1e6:.1f}M params; rollout {len(result.turns)} turns, "
          f"{result.generated_tokens} tokens; sampler alone {baseline:.0f} tok/s, "
          f"in rollouts {rotax_rate:.0f} tok/s; split {split}", file=sys.stderr)
    cpu_ratio = statistics.median(cpu_rates["rotax"]) / statistics.median(cpu_rates["baseline"])
    print(json.dumps({"bench": "ppo", "ratio": rotax_rate / baseline, "cpu_time_ratio": cpu_ratio,
                      "better": "higher",
                      "rotax": rotax_rate, "baseline": baseline, "unit": "tokens/s",
                      "config": config, "split_s": split}))


if __name__ == "__main__":
    main()
