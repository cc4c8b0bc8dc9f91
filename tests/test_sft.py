"""SFT: loss/gradients/AdamW vs transformers + torch, data batches, NaN stop, kill-and-resume,
and 8 simulated devices vs 1."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rotax
from rotax import sft, sft_loop
from rotax.checkpoint import CheckpointStore
from rotax.models.hf import hf_names
from rotax.sft_data import Batch, GeneralPointsSource, JsonlChatSource, pack_examples
from rotax.train_state import make_optimizer, optimizer_config
from tests import hf_fixtures, sft_run_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return hf_fixtures.llama(tmp_path_factory.mktemp("llama"), tied=False)


def _batch(seed=0, rows=4):
    return sft_run_check.random_batch(seed, 0, rows=rows, bucket=8, max_length=32)


def _torch_masked_loss(model, batch):
    tokens = torch.as_tensor(batch.tokens, dtype=torch.long)
    logits = model(input_ids=tokens, attention_mask=torch.as_tensor(batch.attention_mask)).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -torch.gather(logp, -1, tokens[:, 1:, None])[..., 0]
    mask = torch.as_tensor(batch.loss_mask[:, 1:])
    return (nll * mask).sum() / mask.sum()


def _canonical(cfg, named: dict, shapes):
    """torch tensors by HF name -> a canonical-tree of numpy arrays (stacked layers)."""
    def leaf(path, _):
        keys = tuple(k.key for k in path)
        arrays = [named[n].detach().numpy() for n in hf_names(cfg, keys)]
        return np.stack(arrays) if keys[:2] == ("model", "layers") else arrays[0]

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-30))


def test_loss_and_gradients_match_torch(llama_dir):
    batch = _batch()
    cfg, params = rotax.load_hf(llama_dir)
    one = Batch(*(x[None] for x in batch))
    loss, grads, count = jax.jit(lambda p, b: sft.loss_and_grads(cfg, p, b))(params, one)
    model = hf_fixtures.load_torch(llama_dir)
    ref_loss = _torch_masked_loss(model, batch)
    ref_loss.backward()
    ref_grads = _canonical(cfg, {n: p.grad for n, p in model.named_parameters()}, params)
    assert count == batch.loss_mask[:, 1:].sum()
    assert abs(float(loss) - ref_loss.item()) / ref_loss.item() <= 1e-5
    errors = jax.tree.map(_rel, grads, ref_grads)
    assert max(jax.tree.leaves(errors)) <= 1e-5, errors
    # Two micro-batches of 2 rows: the same mean loss and gradients as one batch of 4.
    two = sft.split_micro_batches(batch, 2)
    loss2, grads2, _ = jax.jit(lambda p, b: sft.loss_and_grads(cfg, p, b))(params, two)
    assert abs(float(loss2) - float(loss)) <= 1e-6 * abs(float(loss))
    assert max(jax.tree.leaves(jax.tree.map(_rel, grads2, grads))) <= 1e-5
    # Rematerialized layers: the same gradients.
    remat = cfg.replace(remat=True)
    _, grads3, _ = jax.jit(lambda p, b: sft.loss_and_grads(remat, p, b))(params, one)
    assert max(jax.tree.leaves(jax.tree.map(_rel, grads3, grads))) <= 1e-6


def test_train_steps_match_torch_adamw(llama_dir):
    """Three full steps (clip + AdamW, warm-up schedule, weight decay) vs torch.optim.AdamW."""
    section = optimizer_config()
    section.update(learning_rate=1e-3, warmup_steps=2, weight_decay=0.01, max_grad_norm=0.5)
    optimizer, schedule = make_optimizer(section, num_steps=10)
    cfg, params = rotax.load_hf(llama_dir)
    mesh = rotax.make_mesh((1, 1, 1))
    from rotax.train_state import abstract_train_state, init_train_state

    abstract = abstract_train_state(params, optimizer, mesh)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    state = init_train_state(params, optimizer, 0, shardings)
    step = sft.make_train_step(cfg, optimizer, schedule, mesh, shardings)
    model = hf_fixtures.load_torch(llama_dir).train()
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-7,
                                  weight_decay=0.01)
    lrs = []
    for i in range(3):
        batch = _batch(seed=i)
        state, metrics = step(state, sft.split_micro_batches(batch, 1))
        lrs.append(float(metrics["learning_rate"]))
        for group in torch_opt.param_groups:
            group["lr"] = float(schedule(i))
        torch_opt.zero_grad()
        loss = _torch_masked_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        torch_opt.step()
        assert abs(float(metrics["loss"]) - loss.item()) <= 1e-5 * loss.item()
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3])
    ref = _canonical(cfg, dict(model.named_parameters()), params)
    start = jax.tree.map(np.asarray, params)
    moved = jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), start)
    ref_moved = jax.tree.map(lambda a, b: a - b, ref, start)
    errors = jax.tree.map(_rel, moved, ref_moved)
    assert max(jax.tree.leaves(errors)) <= 1e-4, errors
    assert int(state.step) == 3
