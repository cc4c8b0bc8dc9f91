"""SFT on a real pretrained model (SmolLM2-135M-Instruct) with GeneralPoints JSON-chat examples:
the first step's loss against a torch reference on the same batch, the loss falls over 10 steps,
then `rotax analyze` (base vs the SFT result) and `rotax reset --op uv-merge` on it."""

import csv
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import rotax
from rotax.cli import main as rotax_main
from rotax.io import base_model
from rotax.runtime import run_config
from rotax.runtime.metrics import read_metrics
from rotax.runtime.sharding import make_mesh
from rotax.sft import data as sft_data
from rotax.sft import loop as sft_loop
from rotax.sft import step as sft_step
from rotax.tasks.points.sft_source import make_source

STEPS = 10


def torch_answer_loss(model, batch) -> float:
    """Mean next-token cross-entropy over the answer tokens (loss_mask) of a right-padded batch."""
    tokens = torch.from_numpy(batch.tokens.astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=tokens, attention_mask=torch.from_numpy(batch.attention_mask.astype(np.int64))).logits
    logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0].numpy()
    weights = batch.loss_mask[:, 1:].astype(np.float64)
    return float((nll * weights).sum() / weights.sum())


def test_sft_then_analyze_and_reset(smollm2_dir, smollm2_rotax, smollm2_torch, tmp_path):
    cfg, params, tok = smollm2_rotax
    config = run_config.default_config()
    config.run_dir, config.seed = str(tmp_path / "run"), 0
    config.model = base_model.default_config()
    config.model.path = str(smollm2_dir)
    config.data = sft_data.default_config()  # GeneralPoints, ID rule, JSON-chat renderer
    config.sft = sft_step.default_config()
    config.sft.update(dict(num_steps=STEPS, batch_size=1, learning_rate=5e-5, warmup_steps=0,
                           checkpoint_every=STEPS, checkpoint_initial=False, eval_every=0, probe_every=0,
                           progress=False, async_checkpointing=False))
    source = make_source(config.data, tok, batch_size=1)
    first = source(config.seed, 0)
    assert first.loss_mask.sum() >= 20 and "{" in tok.decode(first.tokens[0][first.loss_mask[0] > 0])
    reference_loss = torch_answer_loss(smollm2_torch, first)

    began = time.perf_counter()
    start = jax.tree.map(jnp.copy, params)  # the loop donates its state; keep the fixture's params
    result = sft_loop.train(config, cfg, start, source, mesh=make_mesh((1, 1, 1), jax.devices()[:1]),
                            run_metadata={"model": {"source": str(smollm2_dir), "hf_config": cfg.hf_config}})
    losses = [row["train/loss"] for row in read_metrics(config.run_dir, "sft") if "train/loss" in row]
    print(f"SFT {time.perf_counter() - began:.0f} s, batch {first.tokens.shape}, losses "
          f"{np.round(losses, 4).tolist()}; torch step-1 loss {reference_loss:.6f}")
    assert len(losses) == STEPS
    assert abs(losses[0] - reference_loss) <= 1e-4 * reference_loss
    assert np.mean(losses[-3:]) < 0.7 * losses[0]

    began = time.perf_counter()
    tuned = tmp_path / "sft-hf"
    rotax.export_hf(cfg, result.state.params, tuned, source=smollm2_dir)
    assert rotax_main(["analyze", "--reference", str(smollm2_dir), "--target", str(tuned),
                       "--out", str(tmp_path / "analysis"), "--modules", "q", "--null-seeds", "0",
                       "--no-plots"]) == 0
    print(f"export + analyze {time.perf_counter() - began:.0f} s")
    rows = list(csv.DictReader(open(tmp_path / "analysis" / "metrics.csv")))
    assert {r["module"] for r in rows} == {"q"} and len({r["layer"] for r in rows}) == 30
    assert all(0 <= float(r["sigma_drift"]) < 0.1 for r in rows)  # 10 small steps: small, nonzero drift
    assert any(float(r["sigma_drift"]) > 0 for r in rows)
    assert rotax_main(["reset", "--reference", str(smollm2_dir), "--target", str(tuned), "--op", "uv-merge",
                       "--top", "0.2", "--modules", "q", "--layers", "0-3", "--out", str(tmp_path / "reset")]) == 0
    _, repaired = rotax.load_hf(tmp_path / "reset")
    q = lambda tree: np.asarray(tree["model"]["layers"]["self_attn"]["q_proj"]["weight"][0], np.float64)  # noqa: E731
    base_q, tuned_q, reset_q = q(params), q(result.state.params), q(repaired)
    assert not np.array_equal(tuned_q, base_q)
    # numpy oracle of uv-merge: the base's top 20% singular directions carrying the SFT model's
    # singular values, the SFT model's own triplets below them
    k = int(0.2 * min(base_q.shape))
    u_b, _, vt_b = np.linalg.svd(base_q, full_matrices=False)
    u_t, s_t, vt_t = np.linalg.svd(tuned_q, full_matrices=False)
    want = (u_b[:, :k] * s_t[:k]) @ vt_b[:k] + (u_t[:, k:] * s_t[k:]) @ vt_t[k:]
    assert np.max(np.abs(reset_q - want)) <= 1e-4 * np.max(np.abs(want))
    untouched = np.asarray(repaired["model"]["layers"]["self_attn"]["q_proj"]["weight"][4])
    assert np.array_equal(untouched, np.asarray(result.state.params["model"]["layers"]["self_attn"]["q_proj"]["weight"][4]))
    assert json.loads((tmp_path / "reset" / "config.json").read_text())["num_hidden_layers"] == 30
