"""Resuming a study run directory with other settings is refused unless the forced stages redo
what the change invalidates (rotax.study.resume)."""

import copy
import json

import pytest

from rotax.runtime import run_config
from rotax.study.pipeline import STAGE_DIRS, STAGES
from rotax.study.resume import changed_settings, check_resumable


@pytest.fixture(scope="module")
def toy():
    return run_config.config_to_dict(run_config.load_config("toy"))


def _with(config: dict, **changes) -> dict:
    out = copy.deepcopy(config)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = out
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def test_each_change_is_mapped_to_the_first_stage_using_it(toy):
    assert changed_settings(toy, copy.deepcopy(toy)) == {}
    lr = toy["sft"]["learning_rate"]
    assert changed_settings(toy, _with(toy, sft__learning_rate=lr * 2)) == {"sft.learning_rate": "sft"}
    assert changed_settings(toy, _with(toy, study__probe_hands=7)) == {"study.probe_hands": "autoselect"}
    assert changed_settings(toy, _with(toy, study__reset_hands=7)) == {"study.reset_hands": "ppo"}
    assert changed_settings(toy, _with(toy, pretrain__num_steps=3)) == {"pretrain.num_steps": "base"}
    # layout and display only
    assert changed_settings(toy, _with(toy, mesh__shape=[1, 2, 1], study__progress=False, run_dir="x")) == {}
    # a setting the table does not know, on one side only, counts from the first stage
    assert changed_settings(toy, _with(toy, newsection__knob=1)) == {"newsection.knob": "base"}


def _run_dir(tmp_path, config, stage_files=(), dirs=()):
    (tmp_path / "stages").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(config))
    for stage in stage_files:
        (tmp_path / "stages" / f"{stage}.json").write_text("{}")
    for d in dirs:
        (tmp_path / d).mkdir()
    return tmp_path


def test_a_change_that_would_reuse_finished_stages_is_refused(tmp_path, toy):
    run_dir = _run_dir(tmp_path, toy, stage_files=("base", "sft", "ppo"), dirs=("sft", "ppo"))
    new = _with(toy, sft__learning_rate=toy["sft"]["learning_rate"] * 2)
    never = len(STAGES)
    with pytest.raises(ValueError) as error:
        check_resumable(run_dir, new, STAGES, STAGE_DIRS, first_forced=never)
    message = str(error.value)
    assert "sft.learning_rate" in message and "--force sft" in message and "sft, ppo" in message
    with pytest.raises(ValueError):  # forcing from a later stage still reuses the old SFT
        check_resumable(run_dir, new, STAGES, STAGE_DIRS, first_forced=STAGES.index("ppo"))
    check_resumable(run_dir, new, STAGES, STAGE_DIRS, first_forced=STAGES.index("sft"))
    check_resumable(run_dir, new, STAGES, STAGE_DIRS, first_forced=STAGES.index("base"))
    check_resumable(run_dir, copy.deepcopy(toy), STAGES, STAGE_DIRS, first_forced=never)  # same settings


def test_only_outputs_at_or_after_the_changed_stage_matter(tmp_path, toy):
    new = _with(toy, ppo__learning_rate=1.0)
    run_dir = _run_dir(tmp_path, toy, stage_files=("base", "sft"))
    check_resumable(run_dir, new, STAGES, STAGE_DIRS, first_forced=len(STAGES))  # PPO not begun
    (run_dir / "ppo").mkdir()  # a killed PPO stage: its checkpoints would be resumed
    with pytest.raises(ValueError, match="ppo.learning_rate"):
        check_resumable(run_dir, new, STAGES, STAGE_DIRS, first_forced=len(STAGES))


def test_a_new_run_directory_has_nothing_to_check(tmp_path, toy):
    check_resumable(tmp_path / "fresh", toy, STAGES, STAGE_DIRS, first_forced=len(STAGES))
