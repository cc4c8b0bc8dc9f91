"""The repetition penalty (rotax.sampling.penalties) against transformers: the logit rule vs
``RepetitionPenaltyLogitsProcessor``, and greedy decoding with a penalty vs
``generate(repetition_penalty=...)`` on a tiny random Llama."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rotax
from rotax import sampling
from rotax.sampling import penalties
from rotax.sampling.sampler import SamplingOptions
from tests.support import hf_fixtures


def test_penalty_matches_transformers_logits_processor():
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    vocab = 50
    prompts = rng.integers(0, vocab, (3, 7))
    mask = np.ones_like(prompts, bool)
    mask[1, :3] = False  # left padding: ids there are not seen
    logits = rng.normal(size=(3, vocab)).astype(np.float32) * 3
    seen = penalties.seen_tokens(jnp.asarray(prompts), jnp.asarray(mask), vocab)
    got = np.asarray(penalties.apply_repetition_penalty(jnp.asarray(logits), seen, 1.3))
    for row in range(3):
        ids = torch.tensor(prompts[row][mask[row]])[None]
        want = RepetitionPenaltyLogitsProcessor(1.3)(ids, torch.tensor(logits[row:row + 1]))
        np.testing.assert_allclose(got[row], want[0].numpy(), rtol=1e-6)
    assert not np.allclose(got, logits)  # the case tests something


def test_greedy_with_penalty_matches_transformers_generate(tmp_path):
    import torch

    path = hf_fixtures.llama(tmp_path / "m", tied=False, layers=2)
    cfg, params = rotax.load_hf(path)[:2]
    vocab = hf_fixtures.TINY["vocab_size"]
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, vocab, n).tolist() for n in (5, 9)]
    new, no_eos = 12, (vocab + 5,)
    options = SamplingOptions(temperature=0.0, max_new_tokens=new, repetition_penalty=1.8)
    got = sampling.generate(cfg, params, prompts, jax.random.key(0), options, eos_ids=no_eos, pad_id=0)
    torch_model = hf_fixtures.load_torch(path)
    changed = False
    for prompt, g in zip(prompts, got):
        def hf(**extra):
            with torch.no_grad():
                out = torch_model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False,
                                           attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                           pad_token_id=0, **extra)
            return out[0, len(prompt):].tolist()

        want = hf(repetition_penalty=1.8)
        assert g.tokens.tolist() == want
        changed |= want != hf()
    assert changed  # the penalty changed some greedy continuation: the case tests something


def test_bad_penalty_is_rejected():
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingOptions(repetition_penalty=0.0)
