"""Run in a subprocess with 4 fake CPU devices: the gate's NLL scorer on a (1, 2, 2) mesh scores
like one device with the parameters sharded, a candidate repair keeps every leaf's sharding, and
the repaired tree exports.

Usage: python -m tests.support.gate_mesh_check ROOT
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rotax.gate import search  # noqa: E402
from rotax.gate.probes import read_chat_jsonl  # noqa: E402
from rotax.gate.scoring import NllScorer  # noqa: E402
from rotax.io.hf import export_hf_checkpoint, load_hf_checkpoint  # noqa: E402
from rotax.io.tokenizer import load_tokenizer  # noqa: E402
from rotax.runtime.sharding import make_mesh  # noqa: E402
from rotax.runtime.tree_paths import flatten_by_path  # noqa: E402
from tests.support import gate_fixtures  # noqa: E402


def main(root: Path):
    assert jax.device_count() == 4, jax.devices()
    base, tuned = gate_fixtures.make_pair(root, damage_layers=())
    rng = np.random.default_rng(0)
    words = ["1", "2", "3", "7", "10", "+", "*", "c7", "J", "K"]
    probe = root / "probe.jsonl"
    probe.write_text("".join(json.dumps({"messages": [{"role": "user", "content": " ".join(
        rng.choice(words, 5))}], "answer": " ".join(rng.choice(words, 3))}) + "\n" for _ in range(24)))
    mesh = make_mesh((1, 2, 2))
    cfg, sharded = load_hf_checkpoint(tuned, mesh=mesh)
    _, single = load_hf_checkpoint(tuned)
    examples, tok = read_chat_jsonl(probe), load_tokenizer(tuned)
    on_mesh = NllScorer(cfg, tok, examples, mesh=mesh, batch_size=6)(sharded)
    alone = NllScorer(cfg, tok, examples, batch_size=6)(single)
    np.testing.assert_allclose(on_mesh, alone, rtol=1e-5)
    up = sharded["model"]["layers"]["mlp"]["up_proj"]["weight"]
    assert not up.sharding.is_fully_replicated, up.sharding

    _, base_params = load_hf_checkpoint(base, mesh=mesh)
    chosen = search.candidates(cfg, None, ("layer-reset",))[0]
    repaired = chosen.apply(sharded, base_params, cfg)
    for path, leaf in flatten_by_path(repaired).items():
        assert leaf.sharding == flatten_by_path(sharded)[path].sharding, path
    export_hf_checkpoint(cfg, repaired, root / "model", source=tuned)
    assert (root / "model" / "model.safetensors").is_file()
    print("mesh gate ok", chosen.name)

if __name__ == "__main__":
    main(Path(sys.argv[1]))
