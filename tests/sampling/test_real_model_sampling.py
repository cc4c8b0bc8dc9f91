"""Greedy generation on a real pretrained model (SmolLM2-135M-Instruct): rotax's jitted sampler
against transformers' ``generate`` in one left-padded batch, and the KV-cache decode against the
full forward over the same tokens."""

import jax
import numpy as np
import pytest
import torch

import rotax
from rotax.io.tokenizer import encode_prompt, eos_ids, pad_id
from rotax.sampling import sampler
from tests.support.real_model import CHAT_PROMPTS, left_padded

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def generations(smollm2_rotax):
    cfg, params, tok = smollm2_rotax
    prompts = [encode_prompt(tok, messages) for messages in CHAT_PROMPTS]
    options = sampler.SamplingOptions(temperature=0.0, max_new_tokens=NEW_TOKENS)
    out = sampler.generate(cfg, params, prompts, jax.random.key(0), options, eos_ids=eos_ids(tok, cfg),
                           pad_id=pad_id(tok, cfg))
    return prompts, out


def test_greedy_generation_equals_transformers_generate(smollm2_rotax, smollm2_torch, generations):
    cfg, _, tok = smollm2_rotax
    prompts, out = generations
    tokens, mask, _ = left_padded(prompts, pad_id(tok, cfg))
    with torch.no_grad():
        ref = smollm2_torch.generate(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
                                     max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                                     eos_token_id=list(eos_ids(tok, cfg)), pad_token_id=pad_id(tok, cfg),
                                     temperature=None, top_p=None, top_k=None).numpy()[:, tokens.shape[1]:]
    stop = set(eos_ids(tok, cfg))
    for row, generation in enumerate(out):
        want = []
        for t in ref[row]:
            want.append(int(t))
            if t in stop:
                break
        assert generation.tokens.tolist() == want, (row, tok.decode(generation.tokens), tok.decode(want))
    print("rotax:", [tok.decode(g.tokens) for g in out])


def test_kv_cache_decode_equals_full_forward(smollm2_rotax, generations):
    """The sampler's per-token log-probs (prefill + cached decode steps) equal log-softmax of
    one full forward over prompt + generation."""
    cfg, params, _ = smollm2_rotax
    prompts, out = generations
    rows = [prompt + generation.tokens.tolist() for prompt, generation in zip(prompts, out)]
    ids = np.zeros((len(rows), max(map(len, rows))), np.int32)  # right-padded: causal logits unchanged
    for row, seq in enumerate(rows):
        ids[row, :len(seq)] = seq
    logits = np.asarray(rotax.forward(cfg, params, ids)).astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.sum(np.exp(logits - top), -1, keepdims=True))
    worst = 0.0
    for row, (prompt, generation) in enumerate(zip(prompts, out)):
        start = len(prompt) - 1
        full = logp[row, np.arange(start, start + len(generation.tokens)), generation.tokens]
        worst = max(worst, float(np.max(np.abs(full - generation.logprobs))))
    print(f"KV decode vs full forward: max |log-prob diff| {worst:.2e}")
    assert worst <= 2e-4
