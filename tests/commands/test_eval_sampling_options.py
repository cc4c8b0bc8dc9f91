"""`rotax eval`'s decoding from a model's generation_config.json (the reference's evaluator
samples with it, Qwen2.5-Instruct's repetition penalty included)."""

import json
from types import SimpleNamespace

from rotax.commands.eval import sampling_options


def _args(**kw):
    base = dict(greedy=False, temperature=None, top_p=None, top_k=None, max_new_tokens=256)
    return SimpleNamespace(**{**base, **kw})


def test_generation_config_sets_sampling_and_repetition_penalty(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}))
    options = sampling_options(_args(), tmp_path)
    assert (options.temperature, options.top_p, options.top_k, options.repetition_penalty) == (0.7, 0.8, 20, 1.05)
    assert sampling_options(_args(top_k=5), tmp_path).top_k == 5
    greedy = sampling_options(_args(greedy=True), tmp_path)
    assert greedy.greedy and greedy.repetition_penalty == 1.0
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "repetition_penalty": 1.3}))
    plain = sampling_options(_args(), tmp_path)  # HF's greedy generate applies the penalty too
    assert plain.greedy and plain.repetition_penalty == 1.3
