"""Run in a subprocess with 8 simulated CPU devices: two PPO updates (rollout + scoring +
update) of the first-token task on a 1-device mesh, on a 2x2x2 mesh of 8 devices and on the
same mesh as ``jax.make_mesh`` builds it (Explicit axis types); prints one JSON line with the
largest differences.

Usage: python -m tests.support.ppo_devices_check RUN_DIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rotax.rl.ppo import loop as ppo_loop  # noqa: E402
from rotax.runtime.metrics import read_metrics  # noqa: E402
from rotax.models import decoder  # noqa: E402
from rotax.runtime.sharding import make_mesh  # noqa: E402
from tests.support import ppo_fixtures as fx  # noqa: E402

MESHES = {  # 2x2x2: data, fsdp and tensor
    "1x1x1": lambda: make_mesh((1, 1, 1), jax.devices()[:1]),
    "2x2x2": lambda: make_mesh((2, 2, 2), jax.devices()),
    "explicit 2x2x2": lambda: jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor")),
}


def run(run_dir, mesh):
    config = fx.tiny_config(run_dir, num_updates=2, learning_rate=1e-3, end_learning_rate=1e-3,
                            max_new_tokens=3)
    cfg = fx.tiny_model_config()
    env = fx.FirstTokenEnvironment(config.ppo.episodes_per_update, fx.options(config), mesh=mesh)
    policy = decoder.init_params(cfg, jax.random.PRNGKey(0))
    result = ppo_loop.train(config, cfg, policy, env, mesh=mesh, pad_id=fx.PAD)
    q = result.state.params["policy"]["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    shards = len({s.device for s in q.addressable_shards})
    return jax.tree.map(np.asarray, jax.device_get(result.state.params)), read_metrics(run_dir, "ppo"), shards


def main(root):
    assert jax.device_count() == 8, jax.devices()
    reference, ref_rows, _ = run(f"{root}/1x1x1", MESHES["1x1x1"]())
    start = jax.tree.map(np.asarray, {"policy": decoder.init_params(fx.tiny_model_config(), jax.random.PRNGKey(0))})
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(reference["policy"]),
                                                             jax.tree.leaves(start["policy"])))
    out = {"moved": moved}
    for name in ("2x2x2", "explicit 2x2x2"):
        params, rows, shards = run(f"{root}/{name.replace(' ', '_')}", MESHES[name]())
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)))
        metrics = {k: max(abs(r[k] - s[k]) for r, s in zip(rows, ref_rows))
                   for k in ("train/reward_mean", "train/loss", "train/value_loss", "train/approx_kl")}
        out[name] = {"param_diff": diff, "metric_diff": metrics, "devices_holding_q": shards}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
