"""fp32 logits of rotax vs transformers (torch, CPU) on tiny random models."""

import numpy as np
import pytest

import rotax
from tests.support import hf_fixtures

BUILDERS = {
    "llama3_untied": lambda d: hf_fixtures.llama(d, tied=False),
    "llama3_tied": lambda d: hf_fixtures.llama(d, tied=True),
    "qwen2_tied_bias": lambda d: hf_fixtures.qwen2(d, tied=True),
    "qwen2_untied": lambda d: hf_fixtures.qwen2(d, tied=False),
    "mllama_text": lambda d: hf_fixtures.mllama(d),
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def checkpoint(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def _tokens(seed=0, batch=2, seq=40, vocab=hf_fixtures.TINY["vocab_size"]):
    # seq 40 > original_max_position_embeddings (32) exercises the llama3 frequency scaling.
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq), dtype=np.int32)


def test_logits_match_transformers(checkpoint):
    tokens = _tokens()
    ref = hf_fixtures.torch_logits(checkpoint, tokens)
    cfg, params = rotax.load_hf(checkpoint)
    got = np.asarray(rotax.forward(cfg, params, tokens))
    assert got.dtype == np.float32 and got.shape == ref.shape
    rel = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-4, rel


def test_padded_kv_cache_decode_matches_full_pass(checkpoint):
    """Prefill a left-padded prompt, then decode one token at a time: same logits as one pass."""
    import jax.numpy as jnp

    cfg, params = rotax.load_hf(checkpoint)
    tokens = _tokens(seed=1, batch=2, seq=12)
    pad = 3  # row 1 is left-padded by 3 slots
    kv_mask = np.ones((2, 16), bool)
    kv_mask[1, :pad] = False
    positions = np.tile(np.arange(12), (2, 1))
    positions[1] = np.maximum(np.arange(12) - pad, 0)
    full = rotax.forward(cfg, params, tokens[:1])
    full_padded = rotax.forward(cfg, params, tokens[1:, pad:])
    cache = rotax.init_cache(cfg, 2, 16)
    out = rotax.apply(cfg, params, jnp.asarray(tokens[:, :8]), positions=jnp.asarray(positions[:, :8]),
                      kv_mask=jnp.asarray(kv_mask), cache=cache, cache_index=0)
    steps = [out.logits]
    cache = out.cache
    for t in range(8, 12):
        out = rotax.apply(cfg, params, jnp.asarray(tokens[:, t:t + 1]),
                          positions=jnp.asarray(positions[:, t:t + 1]), kv_mask=jnp.asarray(kv_mask),
                          cache=cache, cache_index=t)
        steps.append(out.logits)
        cache = out.cache
    logits = np.concatenate([np.asarray(s) for s in steps], axis=1)
    np.testing.assert_allclose(logits[0], np.asarray(full)[0], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(logits[1, pad:], np.asarray(full_padded)[0], rtol=2e-4, atol=2e-4)
