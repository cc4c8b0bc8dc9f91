"""SFT: loss/gradients/AdamW vs transformers + torch, data batches, NaN stop, kill-and-resume,
and 8 simulated devices vs 1."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

import rotax
from rotax.sft import step as sft
from rotax.sft import loop as sft_loop
from rotax.io.checkpoint import CheckpointStore
from rotax.io.hf import hf_names
from rotax.sft.data import JsonlChatSource, pack_examples, tokenizer_encoder
from rotax.tasks.points.sft_source import GeneralPointsSource
from rotax.training.train_state import host_params, make_optimizer, optimizer_config
from tests.support import hf_fixtures
from tests.support import sft_run_check

ROOT = Path(__file__).resolve().parents[2]
# Tests compile at XLA -O0: several times faster to build, the same float32 arithmetic.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
SUBPROCESS_ENV = dict(os.environ, JAX_PLATFORMS="cpu", OMP_WAIT_POLICY="PASSIVE",
                      XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                                "--xla_cpu_multi_thread_eigen=false")


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
    one = sft.prepare_batch(batch, 1)
    assert one.positions.shape[-1] < batch.tokens.shape[1] - 1  # logits only where needed
    loss_and_grads = jax.jit(lambda p, b: sft.loss_and_grads(cfg, p, b), compiler_options=FAST_COMPILE)
    loss, grads, count = loss_and_grads(params, one)
    model = hf_fixtures.load_torch(llama_dir)
    ref_loss = _torch_masked_loss(model, batch)
    ref_loss.backward()
    ref_grads = _canonical(cfg, {n: p.grad for n, p in model.named_parameters()}, params)
    assert count == batch.loss_mask[:, 1:].sum()
    assert abs(float(loss) - ref_loss.item()) / ref_loss.item() <= 1e-5
    errors = jax.tree.map(_rel, grads, ref_grads)
    assert max(jax.tree.leaves(errors)) <= 1e-5, errors
    # Two micro-batches of 2 rows, layers rematerialized: the same mean loss and gradients.
    two = sft.prepare_batch(batch, 2)
    remat = cfg.replace(remat=True)
    loss2, grads2, _ = jax.jit(lambda p, b: sft.loss_and_grads(remat, p, b),
                               compiler_options=FAST_COMPILE)(params, two)
    assert abs(float(loss2) - float(loss)) <= 1e-6 * abs(float(loss))
    assert max(jax.tree.leaves(jax.tree.map(_rel, grads2, grads))) <= 1e-5


def test_train_steps_match_torch_adamw(llama_dir):
    """Three full steps (clip + AdamW, warm-up schedule, weight decay) vs torch.optim.AdamW."""
    section = optimizer_config()
    section.update(learning_rate=1e-3, warmup_steps=2, weight_decay=0.01, max_grad_norm=0.5)
    optimizer, schedule = make_optimizer(section, num_steps=10)
    cfg, params = rotax.load_hf(llama_dir)
    mesh = rotax.make_mesh((1, 1, 1))
    from rotax.training.train_state import abstract_train_state, init_train_state

    abstract = abstract_train_state(params, optimizer, mesh)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    state = init_train_state(params, optimizer, 0, shardings)
    step = sft.make_train_step(cfg, optimizer, schedule, mesh, shardings, compiler_options=FAST_COMPILE)
    model = hf_fixtures.load_torch(llama_dir).train()
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-7,
                                  weight_decay=0.01)
    lrs = []
    for i in range(3):
        batch = _batch(seed=i)
        state, metrics = step(state, sft.prepare_batch(batch))
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


# ---------------------------------------------------------------- data


def test_target_positions_list_the_answer_tokens_bucketed():
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], np.float32)
    positions, weights = sft.target_positions(mask, bucket=2)
    np.testing.assert_array_equal(positions, [[1, 2, 0, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(weights, [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_pack_examples_right_pads_to_a_bucket_and_masks_answers():
    batch = pack_examples([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11, 12, 13, 14, 15, 16])], pad_id=0,
                          bucket=8, max_length=64)
    assert batch.tokens.shape == (2, 16) and batch.tokens.dtype == np.int32
    np.testing.assert_array_equal(batch.tokens[0, :6], [5, 6, 7, 8, 9, 0])
    np.testing.assert_array_equal(batch.loss_mask[0, :6], [0, 0, 0, 1, 1, 0])
    assert batch.attention_mask[1].sum() == 10 and batch.loss_mask[1].sum() == 9


def test_general_points_batches_are_a_function_of_seed_and_step():
    from rotax.tasks.points import CompactRenderer
    from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer

    tok = build_toy_tokenizer()
    source = GeneralPointsSource(tokenizer_encoder(tok), batch_size=4, pad_id=tok.pad_token_id,
                                 renderer=CompactRenderer(), rules=("id", "ood"), bucket=16)
    first, again, other = source(0, 5), source(0, 5), source(0, 6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.tokens, other.tokens) or first.tokens.shape != other.tokens.shape
    assert first.tokens.shape[1] % 16 == 0
    prompt, answer = source.example(0, 5, 0)
    assert answer[-1] == tok.eos_token_id and first.loss_mask[0].sum() == len(answer)
    assert ":" in tok.decode(answer) and "|" in tok.decode(prompt)


def test_jsonl_chat_source_targets_the_last_assistant_turn(tmp_path):
    lines = [{"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"},
                           {"role": "user", "content": "d"}, {"role": "assistant", "content": "e f"}]},
             {"messages": [{"role": "user", "content": "no answer"}]},
             {"messages": [{"role": "user", "content": "g"}, {"role": "assistant", "content": "h"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    seen = []

    def encode(prompt, target):
        seen.append((prompt, target))
        return [1] * (2 * len(prompt)), [7] * len(target.split()) + [2]

    source = JsonlChatSource(path, encode, batch_size=2, pad_id=0, bucket=4)
    assert len(source.examples) == 2
    assert seen[0] == (lines[0]["messages"][:3], "e f") and seen[1][1] == "h"
    batch = source(1, 0)
    assert sorted(batch.loss_mask.sum(1).tolist()) == [2.0, 3.0]  # each example once per epoch
    np.testing.assert_array_equal(source(1, 0).tokens, batch.tokens)


# ---------------------------------------------------------------- the loop


def test_nan_loss_stops_the_run_naming_the_step(llama_dir, tmp_path):
    """Batch 4 carries a NaN loss weight: the run stops at step 5; checkpoint 4 is intact."""

    def source(seed, step):
        batch = sft_run_check.random_batch(seed, step)
        if step == 4:
            batch.loss_mask[0, -1] = np.nan
        return batch

    config = sft_run_check.tiny_config(tmp_path / "run", llama_dir, 8)
    with pytest.raises(sft_loop.NonFiniteLossError, match=r"at step 5 \(batch 4\)") as err:
        sft_run_check.run_tiny(config, source=source, compiler_options=FAST_COMPILE)
    assert "checkpoints/sft/4" in str(err.value)
    store = CheckpointStore(config.run_dir, "sft")
    assert store.steps() == [0, 2, 4]
    cfg = rotax.ModelConfig.from_hf_dir(llama_dir)
    optimizer, _ = make_optimizer(config.sft, 8)
    from rotax.training.train_state import abstract_train_state

    abstract = abstract_train_state(rotax.param_shapes(cfg), optimizer, rotax.make_mesh((1, 1, 1)))
    step, state, metadata = store.restore_latest(abstract)
    assert step == 4 and int(state.step) == 4 and metadata["data_position"]["next_batch"] == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    store.close()


def test_killed_run_resumes_bit_identically(llama_dir, tmp_path):
    """SIGKILL a run at a random batch, resume it: final params equal an uninterrupted run's."""
    steps = 7
    command = [sys.executable, "-m", "tests.support.sft_run_check", "run"]
    full = subprocess.Popen(command + [str(tmp_path / "full"), str(llama_dir), str(steps), "--out",
                                       str(tmp_path / "full.npz")], cwd=ROOT, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_at = random.Random().randint(3, steps - 1)
    proc = subprocess.Popen(command + [str(tmp_path / "killed"), str(llama_dir), str(steps)], cwd=ROOT,
                            env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.strip() == f"batch {kill_at}":
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=300) == -signal.SIGKILL, f"never reached batch {kill_at}"
    output = full.communicate(timeout=300)[0]
    assert full.returncode == 0, output
    resumed = subprocess.run(command + [str(tmp_path / "killed"), str(llama_dir), str(steps), "--resume",
                                        "--out", str(tmp_path / "resumed.npz")], cwd=ROOT,
                             env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    first = [line for line in resumed.stdout.splitlines() if line.startswith("batch")][0]
    assert int(first.split()[1]) % 2 == 0 and int(first.split()[1]) <= kill_at, (kill_at, first)
    want, got = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(want.files) == sorted(got.files)
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} (killed at {kill_at})")
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, steps + 1))


def test_sharded_runs_match_one_device(llama_dir, tmp_path):
    """fsdp 4 x tensor 2 and data 2 x fsdp 4 (8 simulated devices) vs 1 device, then a
    checkpoint restored onto another mesh."""
    env = dict(SUBPROCESS_ENV, XLA_FLAGS=SUBPROCESS_ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-m", "tests.support.sft_run_check", "meshes", str(tmp_path), str(llama_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1x4x2: matches 1 device" in proc.stdout and "2x4x1: matches 1 device" in proc.stdout
    assert "restored onto 2x4x1: identical" in proc.stdout


def test_checkpoint_steps_save_and_evaluate_exactly_those_steps(llama_dir, tmp_path):
    """The study's uneven lists: sft.checkpoint_steps (with checkpoint_every/eval_every off)
    saves and evaluates at exactly those steps, plus the last step's checkpoint."""
    from rotax.io import base_model

    config = sft_run_check.tiny_config(tmp_path / "run", llama_dir, 6, checkpoint_every=0,
                                       checkpoint_initial=False, checkpoint_steps=(0, 1, 4))
    cfg = base_model.model_config(config.model, config.model.path)
    evaluated = []

    def hook(params, step):
        evaluated.append(int(step))
        return {"ood_accuracy": 0.0}

    load = lambda: base_model.load_base(config.model, sft_loop.mesh_from_config(config), config.run_dir)[1]  # noqa: E731
    sft_loop.train(config, cfg, load, lambda seed, step: sft_run_check.random_batch(seed, step, rows=8),
                   eval_hook=hook, compiler_options=FAST_COMPILE)
    assert evaluated == [0, 1, 4]
    assert CheckpointStore(config.run_dir, "sft").steps() == [0, 1, 4, 6]


def test_checkpoint_steps_beyond_the_run_are_refused(llama_dir, tmp_path):
    from rotax.io import base_model

    config = sft_run_check.tiny_config(tmp_path / "run", llama_dir, 6, checkpoint_steps=(2, 7, -1))
    cfg = base_model.model_config(config.model, config.model.path)
    with pytest.raises(ValueError, match=r"sft.checkpoint_steps \[-1, 7\] lie outside 0..sft.num_steps=6"):
        sft_loop.train(config, cfg, lambda: None, lambda seed, step: None)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_resume_from_the_initial_checkpoint_does_not_save_it_again(llama_dir, tmp_path):
    """Killed before the first checkpoint after step 0 was finalized: the resumed run starts
    from checkpoint 0 (it used to re-save step 0, which orbax refuses) and finishes."""
    import shutil

    from rotax.io import base_model

    config = sft_run_check.tiny_config(tmp_path / "run", llama_dir, 2, checkpoint_every=0)
    cfg = base_model.model_config(config.model, config.model.path)
    load = lambda: base_model.load_base(config.model, sft_loop.mesh_from_config(config), config.run_dir)[1]  # noqa: E731
    source = lambda seed, step: sft_run_check.random_batch(seed, step, rows=8)  # noqa: E731
    first = sft_loop.train(config, cfg, load, source, compiler_options=FAST_COMPILE)
    store = CheckpointStore(config.run_dir, "sft")
    assert store.steps() == [0, 2]
    shutil.rmtree(store.path(2))  # as if the kill came before orbax finalized step 2
    again = sft_loop.train(config, cfg, load, source, resume=True, compiler_options=FAST_COMPILE)
    assert store.steps() == [0, 2]
    for a, b in zip(jax.tree.leaves(host_params(first.state)), jax.tree.leaves(host_params(again.state))):
        np.testing.assert_array_equal(a, b)
