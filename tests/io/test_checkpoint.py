"""Orbax checkpoints: round trip, damaged checkpoints skipped on resume, params-only restore,
`rotax export`, run metadata."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rotax
from rotax.io import checkpoint
from rotax.io.checkpoint import CheckpointStore, CorruptCheckpointError
from rotax.runtime.sharding import make_mesh
from rotax.training.train_state import TrainState, abstract_train_state, init_train_state, make_optimizer, optimizer_config
from tests.support import hf_fixtures


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return hf_fixtures.llama(tmp_path_factory.mktemp("llama"), tied=True, layers=2)


@pytest.fixture(scope="module")
def model(llama_dir):
    cfg, params = rotax.load_hf(llama_dir)
    optimizer, _ = make_optimizer(optimizer_config(), 10)
    mesh = make_mesh((1, 1, 1))
    abstract = abstract_train_state(params, optimizer, mesh)
    state = init_train_state(params, optimizer, 7, jax.tree.map(lambda a: a.sharding, abstract))
    return cfg, state, abstract


def _bumped(state, k):
    """A distinct state per step: params shifted by k, step = k."""
    return TrainState(jnp.int32(k), jax.tree.map(lambda p: p + k, state.params), state.opt_state,
                      jax.random.fold_in(state.rng, k))


def _largest_file(directory):
    files = [p for p in directory.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_round_trip_with_metadata(model, tmp_path):
    cfg, state, abstract = model
    store = CheckpointStore(tmp_path / "run", "sft")
    store.save(3, _bumped(state, 3), {"config": {"sft": {"learning_rate": 1e-6}}, "metrics": {"loss": 1.5}})
    store.wait()
    path = tmp_path / "run" / "checkpoints" / "sft" / "3"
    assert (path / checkpoint.MANIFEST).is_file() and store.steps() == [3]
    assert not list(path.parent.glob("*tmp*"))
    restored, metadata = store.restore(3, abstract)
    _assert_same(restored, _bumped(state, 3))
    assert isinstance(restored, TrainState) and int(restored.step) == 3
    assert metadata["metrics"] == {"loss": 1.5} and metadata["step"] == 3 and metadata["stage"] == "sft"
    assert checkpoint.read_metadata(path)["config"]["sft"]["learning_rate"] == 1e-6
    params = checkpoint.restore_params(path, abstract.params)
    _assert_same(params, _bumped(state, 3).params)
    store.close()


def test_damaged_checkpoint_is_skipped_with_a_warning(model, tmp_path, caplog):
    cfg, state, abstract = model
    store = CheckpointStore(tmp_path / "run", "ppo", async_save=False)
    for step in (2, 4):
        store.save(step, _bumped(state, step), {"metrics": {}})
    store.wait()
    victim = _largest_file(store.path(4))
    victim.write_bytes(victim.read_bytes()[:-7])  # truncate: a disk-full or half-copied file
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        store.restore(4, abstract)
    with caplog.at_level(logging.WARNING, logger="rotax.io.checkpoint"):
        step, restored, _ = store.restore_latest(abstract)
    assert step == 2 and "skipping damaged checkpoint" in caplog.text and "/ppo/4" in caplog.text
    _assert_same(restored, _bumped(state, 2))
    # A half-written save (orbax's temporary directory, no manifest) is not a checkpoint at all.
    (store.directory / "6.orbax-checkpoint-tmp-123").mkdir()
    assert CheckpointStore(tmp_path / "run", "ppo").steps() == [2, 4]
    store.close()



def test_resume_sets_aside_newer_unusable_steps_so_they_can_be_saved_again(model, tmp_path):
    """Step 4 is damaged: resuming restores step 2, moves 4 aside (kept, not deleted), and the
    run can then save its own step 4 (orbax refuses a step that exists)."""
    cfg, state, abstract = model
    store = CheckpointStore(tmp_path / "run", "sft", async_save=False)
    for step in (0, 2, 4):
        store.save(step, _bumped(state, step), {"metrics": {}})
    store.close()
    victim = _largest_file(tmp_path / "run" / "checkpoints" / "sft" / "4")
    rel, size = victim.relative_to(tmp_path / "run" / "checkpoints" / "sft" / "4"), victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[:-7])

    store = CheckpointStore(tmp_path / "run", "sft", async_save=False)
    start, restored, _ = store.resume(abstract, resume=True)
    assert start == 2 and store.steps() == [0, 2]
    _assert_same(restored, _bumped(state, 2))
    kept = tmp_path / "run" / "checkpoints" / "sft.set-aside" / "4"
    assert (kept / rel).stat().st_size == size - 7  # the damaged file, as it was
    store.save(4, _bumped(state, 40), {"metrics": {}})  # raised StepAlreadyExistsError before
    store.wait()
    assert store.steps() == [0, 2, 4]
    _assert_same(store.restore(4, abstract)[0], _bumped(state, 40))
    store.close()


def test_export_command_writes_a_loadable_hf_directory(llama_dir, model, tmp_path):
    from rotax.cli import main

    cfg, state, abstract = model
    store = CheckpointStore(tmp_path / "run", "sft")
    moved = _bumped(state, 1)
    store.save(1, moved, {"model": {"source": str(llama_dir), "hf_config": cfg.hf_config,
                                    "param_dtype": "float32", "compute_dtype": "float32"}})
    store.close()
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(store.path(1)), "--out", str(out)]) == 0
    cfg2, params2 = rotax.load_hf(out)
    _assert_same(params2, moved.params)
    tokens = np.arange(12, dtype=np.int32).reshape(1, 12)
    np.testing.assert_allclose(hf_fixtures.torch_logits(out, tokens),
                               np.asarray(rotax.forward(cfg2, params2, tokens)), rtol=2e-4, atol=2e-4)


def test_run_metadata_merges_fields(tmp_path):
    checkpoint.update_run_metadata(tmp_path, source="/x", sft_max_ood=None)
    data = checkpoint.update_run_metadata(tmp_path, sft_max_ood={"step": 140, "value": 0.17})
    assert data == {"source": "/x", "sft_max_ood": {"step": 140, "value": 0.17}}
    assert json.loads((tmp_path / checkpoint.RUN_METADATA).read_text()) == data


def test_restore_params_reads_a_subtree_or_one_tensor(model, tmp_path):
    """A PPO-shaped state (params = {"policy": tree, "value_head": ...}): the policy alone, and
    one tensor alone, come back equal to what was saved; latest_checkpoint finds the newest."""
    cfg, state, abstract = model
    wrapped = TrainState(state.step, {"policy": state.params, "value_head": {"w": jnp.ones((3, 2))}},
                         (), state.rng)
    store = CheckpointStore(tmp_path / "run", "ppo", async_save=False)
    store.save(1, wrapped, {})
    store.save(5, TrainState(jnp.int32(5), {"policy": _bumped(state, 5).params,
                                            "value_head": {"w": jnp.zeros((3, 2))}}, (), state.rng), {})
    store.close()
    newest = checkpoint.latest_checkpoint(tmp_path / "run", "ppo")
    assert newest.name == "5"
    policy = checkpoint.restore_params(newest, abstract.params, subtree=("policy",))
    _assert_same(policy, _bumped(state, 5).params)
    path = ("model", "layers", "mlp", "down_proj", "weight")
    leaf = abstract.params["model"]["layers"]["mlp"]["down_proj"]["weight"]
    one = checkpoint.restore_params(newest.parent / "1", leaf, subtree=("policy", *path))
    np.testing.assert_array_equal(np.asarray(one), np.asarray(state.params["model"]["layers"]["mlp"]["down_proj"]["weight"]))
    with pytest.raises(FileNotFoundError, match="no finished sft checkpoint"):
        checkpoint.latest_checkpoint(tmp_path / "run", "sft")
