"""`rotax ppo` end to end: SIGKILL in the middle of an update, resume, and compare with an
uninterrupted run bit for bit (params, value head, Adam moments, RNG, logged metrics)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from rotax.rl import ppo
from rotax.io.checkpoint import CheckpointStore
from rotax.runtime.metrics import read_metrics
from rotax.runtime.run_config import load_config
from rotax.runtime.sharding import make_mesh

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
from rotax.io import base_model
from rotax.rl import ppo
from rotax.runtime import run_config
from rotax.sft import data as sft_data

def get_config():
    config = run_config.default_config()
    config.seed = 5
    config.model = base_model.default_config()
    config.data = sft_data.default_config()
    config.data.renderer = "compact"
    config.ppo = ppo.default_config()
    config.ppo.update(dict(num_updates=4, episodes_per_update=6, attempts=2, temperature=1.0,
                           max_new_tokens=6, rollout_batch_size=8, epochs=2, minibatch_size=8,
                           microbatch_size=8, learning_rate=1e-3, end_learning_rate=1e-4,
                           max_grad_norm=1.0, pre_formula_weight=0.5, checkpoint_every=1,
                           eval_every=0, async_checkpointing=True, progress=False, export_hf=True))
    return config
"""
TIMING = ("seconds", "per_second")


def _env(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               # the three runs share compiles through the cache; -O0 halves the cold compile
               XLA_FLAGS="--xla_backend_optimization_level=0")
    return env


def _final_state(config_file, run_dir, base):
    config = load_config(config_file, [f"run_dir={run_dir}"])
    from rotax.io import base_model

    cfg = base_model.model_config(config.model, base)
    opt = ppo.OptimizerSettings.from_config(config.ppo)
    store = CheckpointStore(run_dir, "ppo", async_save=False)
    steps = store.steps()
    state, _ = store.restore(steps[-1], ppo.abstract_state(cfg, opt, make_mesh()))
    store.close()
    return steps, jax.tree.map(np.asarray, jax.device_get(state))


def _train_rows(run_dir):
    return [{k: v for k, v in row.items() if k != "time" and not k.endswith(TIMING)}
            for row in read_metrics(run_dir, "ppo")]


def _sft_checkpoint(tmp_path, base) -> Path:
    """An SFT-stage checkpoint (as ``rotax sft`` writes them) holding the base's weights."""
    import optax

    import rotax
    from rotax.training.train_state import init_train_state

    _, params = rotax.load_hf(base)
    store = CheckpointStore(tmp_path / "sft_run", "sft", async_save=False)
    store.save(7, init_train_state(params, optax.sgd(0.0), 0), {"model": {"source": str(base)}})
    store.close()
    return store.path(7)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    """The uninterrupted run starts from the HF directory, the killed one from an SFT
    checkpoint of the same weights: equality also shows both --init paths load the same."""
    from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer
    from rotax.tasks.points.toy import write_toy_base

    base = write_toy_base(tmp_path / "base", build_toy_tokenizer(), jax.random.PRNGKey(0),
                          hidden=32, layers=2, heads=2, intermediate=64)
    sft_checkpoint = _sft_checkpoint(tmp_path, base)
    config_file = tmp_path / "tiny_ppo.py"
    config_file.write_text(CONFIG)
    env = _env(tmp_path)

    def args(run_dir, *extra, init=sft_checkpoint):
        return ["ppo", "--config", str(config_file), "--init", str(init),
                f"--config.run_dir={run_dir}", *extra]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "rotax.cli", *args(straight, init=base)], env=env, check=True,
                   cwd=tmp_path, timeout=600)
    died = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "ppo_kill_run.py"), "2", "--",
                           *args(killed)], env=env, cwd=tmp_path, timeout=600)
    assert died.returncode == -9, died.returncode  # SIGKILL inside update index 2
    assert not (killed / "hf").exists()
    resumed = subprocess.run([sys.executable, "-m", "rotax.cli", *args(killed, "--resume")], env=env,
                             cwd=tmp_path, timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    steps_a, state_a = _final_state(config_file, straight, base)
    steps_b, state_b = _final_state(config_file, killed, base)
    assert steps_a == steps_b == [0, 1, 2, 3, 4]
    leaves_a, tree_a = jax.tree.flatten(state_a)
    leaves_b, tree_b = jax.tree.flatten(state_b)
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert _train_rows(straight) == _train_rows(killed)
    assert (killed / "hf" / "ppo" / "config.json").is_file()
    assert "value_head" not in (killed / "hf" / "ppo" / "model.safetensors").read_bytes()[:20000].decode("latin1")
