"""The smoke preset applies to every config file (the toy and the real-model configs): every
stage is shrunk, and the shrunk config passes the loops' own consistency checks."""

import pytest

from rotax.rl.ppo.config import UpdateSettings
from rotax.runtime import run_config
from rotax.study.pipeline import apply_preset


@pytest.mark.parametrize("name", ["toy", "small_real", "qwen2_5_7b", "llama3_2_11b_vision"])
def test_smoke_preset_shrinks_every_config(name):
    overrides = ["study.preset=smoke"] + ([] if name == "toy" else ["model.path=/models/any-hf-dir"])
    config = run_config.load_config(name, overrides)
    full = run_config.load_config(name, overrides[1:])
    apply_preset(config)
    assert config.sft.num_steps <= 40 < full.sft.num_steps
    assert config.ppo.num_updates <= 2 and config.ppo.episodes_per_update <= 16
    assert config.study.eval_hands <= 32 and config.study.reset_hands <= 64
    assert len(config.study.autoselect_layers) * len(config.study.autoselect_ranks) <= 2
    assert config.sft.batch_size % config.sft.grad_accum_steps == 0
    UpdateSettings.from_config(config.ppo)  # minibatch a multiple of microbatch, ...
    if name != "toy":  # a real model: a handful of steps, hands and short answers
        assert config.sft.num_steps <= 4 and config.ppo.num_updates == 1
        assert config.study.max_new_tokens <= 64 and config.ppo.max_new_tokens <= 64
        assert config.study.eval_hands <= 8


def test_unknown_preset_is_refused():
    config = run_config.load_config("toy", ["study.preset=tiny"])
    with pytest.raises(ValueError, match=r"study.preset 'tiny': choose '' or 'smoke'"):
        apply_preset(config)
