"""Run configs: loading config files, typed CLI overrides, unknown keys, the resolved config."""

import json
from pathlib import Path

import pytest

from rotax.runtime import run_config
from rotax.runtime.run_config import ConfigKeyError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
from rotax.io import base_model
from rotax.runtime import run_config
from rotax.sft import step as sft
from rotax.sft import data as sft_data


def get_config():
    config = run_config.default_config()
    config.model = base_model.default_config()
    config.data = sft_data.default_config()
    config.sft = sft.default_config()
    return config
"""


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "small.py"
    path.write_text(CONFIG)
    return str(path)


def test_toy_config_loads_by_name_and_by_path():
    by_name = run_config.load_config("toy")
    by_path = run_config.load_config(str(ROOT / "configs" / "toy.py"))
    assert by_name.to_dict() == by_path.to_dict()
    assert set(by_name.keys()) >= {"model", "data", "sft", "mesh", "seed", "run_dir"}
    assert by_name.sft.b2 == 0.98 and by_name.sft.eps == 1e-7 and by_name.sft.weight_decay == 0.0


def test_overrides_are_typed_by_the_existing_value(config_file):
    config = run_config.load_config(config_file, [
        "sft.learning_rate=1e-6", "sft.num_steps=12", "sft.async_checkpointing=false",
        "mesh.shape=(1,4,2)", "data.rules=id,ood", "run_dir=runs/x", "sft.eval_seeds=[1, 2]",
        "seed=5"])
    assert config.sft.learning_rate == 1e-6 and isinstance(config.sft.learning_rate, float)
    assert config.sft.num_steps == 12 and config.sft.async_checkpointing is False
    assert config.mesh.shape == (1, 4, 2) and config.data.rules == ("id", "ood")
    assert config.run_dir == "runs/x" and config.sft.eval_seeds == (1, 2) and config.seed == 5
    with pytest.raises(ValueError, match="sft.num_steps.*as int"):
        run_config.load_config(config_file, ["sft.num_steps=1.5"])
    with pytest.raises(ValueError, match="true/false"):
        run_config.load_config(config_file, ["sft.progress=maybe"])


def test_unknown_key_lists_the_valid_keys(config_file):
    with pytest.raises(ConfigKeyError) as err:
        run_config.load_config(config_file, ["sft.learnin_rate=1e-5"])
    message = str(err.value)
    assert "sft.learnin_rate" in message and "learning_rate" in message and "num_steps" in message
    with pytest.raises(ConfigKeyError, match=r"valid keys there: .*data.*mesh.*model.*sft"):
        run_config.load_config(config_file, ["nosuchsection.learning_rate=1"])
    with pytest.raises(ConfigKeyError, match="is a section"):
        run_config.load_config(config_file, ["sft=3"])
    with pytest.raises(FileNotFoundError):
        run_config.load_config("no_such_config")


def test_cli_collects_overrides_and_reports_unknown_keys(config_file, capsys):
    from rotax.cli import build_parser, main

    args = build_parser().parse_args(["sft", "--config", config_file, "--config.sft.learning_rate=2e-6",
                                      "--resume", "--config.seed", "9"])
    assert args.resume and args.config_overrides == ["sft.learning_rate=2e-6", "seed=9"]
    config = run_config.config_from_args(args)
    assert config.sft.learning_rate == 2e-6 and config.seed == 9
    assert main(["sft", "--config", config_file, "--config.sft.nope=1"]) == 2
    assert "valid keys there" in capsys.readouterr().err


def test_resolved_config_is_written_as_json_and_repr(config_file, tmp_path):
    config = run_config.load_config(config_file, ["sft.learning_rate=3e-6"])
    path = run_config.write_resolved_config(config, tmp_path)
    values = json.loads(path.read_text())
    assert values["sft"]["learning_rate"] == 3e-6 and values["mesh"]["shape"] == [1, -1, 1]
    assert "learning_rate: 3.0e-06" in (tmp_path / "config.txt").read_text()
    assert run_config.config_from_dict(values).sft.learning_rate == 3e-6


def test_mesh_shape_fills_the_remaining_devices():
    assert run_config.mesh_shape((1, -1, 2), 8) == (1, 4, 2)
    assert run_config.mesh_shape((2, 2, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError):
        run_config.mesh_shape((3, -1, 1), 8)
