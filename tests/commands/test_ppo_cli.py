"""`rotax ppo` argument handling (no training)."""

import json

import pytest

from rotax import cli
from rotax.commands import ppo as ppo_command


class _Config:
    class model:  # noqa: N801 - stands in for a ConfigDict section
        path = ""
    run_dir = "runs/x"


def test_resolve_init_accepts_hf_dirs_and_sft_checkpoints(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert ppo_command.resolve_init(str(hf), _Config) == (hf, None)
    checkpoint = tmp_path / "run" / "checkpoints" / "sft" / "140"
    (checkpoint / "metadata").mkdir(parents=True)
    (checkpoint / "metadata" / "metadata").write_text(json.dumps({"model": {"source": str(hf)}}))
    assert ppo_command.resolve_init(str(checkpoint), _Config) == (hf, checkpoint)
    (checkpoint / "metadata" / "metadata").write_text(json.dumps({"model": {}}))
    with pytest.raises(FileNotFoundError, match="no HF source"):
        ppo_command.resolve_init(str(checkpoint), _Config)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ppo_command.resolve_init(str(tmp_path / "missing"), _Config)
    with pytest.raises(ValueError, match="neither"):
        ppo_command.resolve_init(str(tmp_path), _Config)


def test_ppo_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ppo", "--help"])
    out = capsys.readouterr().out
    assert "--init" in out and "--resume" in out
