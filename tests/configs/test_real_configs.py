"""The real-model configs load, accept CLI overrides, pass the loops' checks, and hold the
study's numbers (written here independently of the config files, from SPEC §1-4 and, for the
reference recipe, from the reference's files named in docs/reproducing-the-study.md)."""

import math

import pytest

from rotax.runtime import run_config
from rotax.training.train_state import make_schedule

REAL = ("llama3_2_11b_vision", "qwen2_5_7b", "small_real")
MODEL_DIR = "/models/some-hf-dir"

# SPEC §2 (SFT) and §3 (PPO), typed in by hand.
SFT = dict(b1=0.9, b2=0.98, eps=1e-7, weight_decay=0.0, batch_size=64, schedule="constant",
           warmup_fraction=0.03)
PPO = dict(gamma=0.9, gae_lambda=0.95, clip_epsilon=0.1, value_coef=0.5, value_clip_epsilon=0.1,
           temperature=0.2, pre_formula_weight=0.5, epochs=4, learning_rate=1e-6,
           end_learning_rate=1e-9, schedule="cosine", kl_coef=0.0,
           entropy_coef=0.0, rule="id", attempts=5,
           max_new_tokens=512)  # the reference's RL rollout budget (evaluation: 256)
# the reference recipe of the two study configs: (rollout top_k, top_p, repetition penalty,
# evaluation temperature) from each checkpoint's generation_config.json; layer-reset ranges and
# whether they include embed/head (analysis/run_parallel-layer*.sh, svd_recover_by_layer*.py)
REFERENCE = {
    "llama3_2_11b_vision": ((50, 0.9, 1.0, 0.6), ("0-9", "10-19", "20-29", "30-39"), True),
    "qwen2_5_7b": ((20, 0.8, 1.05, 0.7), ("0-9", "10-19", "20-27"), False),
}
PER_MODEL = {  # (sft lr, sft steps, ppo updates, turns per update in the reference)
    "llama3_2_11b_vision": (1e-6, 1600, 100, 128 * 4),
    "qwen2_5_7b": (1e-6, 800, 300, 32 * 4),
}


def load(name, *overrides):
    return run_config.load_config(name, [f"model.path={MODEL_DIR}", *overrides])


def runnable_on(config, devices: int) -> None:
    """The checks the SFT and PPO loops make before compiling, for ``devices`` devices."""
    data, fsdp, tensor = run_config.mesh_shape(config.mesh.shape, devices)
    split = data * fsdp
    assert config.sft.batch_size % config.sft.grad_accum_steps == 0
    assert (config.sft.batch_size // config.sft.grad_accum_steps) % split == 0
    assert config.ppo.microbatch_size % split == 0
    assert config.ppo.minibatch_size % config.ppo.microbatch_size == 0
    assert config.study.eval_batch_size % split == 0


@pytest.mark.parametrize("name", REAL)
def test_config_loads_with_the_study_recipe(name):
    config = load(name)
    assert config.model.path == MODEL_DIR
    assert (config.model.param_dtype, config.model.compute_dtype) == ("float32", "bfloat16")
    for key, value in SFT.items():
        assert config.sft[key] == value, key
    for key, value in PPO.items():
        assert config.ppo[key] == value, key
    assert config.ppo.minibatch_size % config.ppo.microbatch_size == 0
    # evaluation: 234 hands per rule from seed 42, 5 attempts, 256 new tokens
    assert (config.study.eval_hands, tuple(config.study.eval_seeds)) == (234, (42,))
    assert (config.sft.eval_hands, tuple(config.sft.eval_seeds)) == (234, (42,))
    assert (config.study.attempts, config.study.max_new_tokens) == (5, 256)
    assert config.study.deck == "standard" and config.data.renderer == "json_chat"
    assert config.study.reset_reference == "peak"
    assert 0 < config.study.analysis_k <= 0.5  # a fraction of min(m, n), no forced zero angles
    if name in REFERENCE:
        (top_k, top_p, penalty, eval_temperature), ranges, embed_head = REFERENCE[name]
        assert config.study.recipe == "reference"
        assert (config.ppo.top_k, config.ppo.top_p, config.ppo.repetition_penalty) == (top_k, top_p, penalty)
        assert (config.study.eval_decoding, config.study.eval_temperature) == ("sampled", eval_temperature)
        assert (config.study.eval_top_k, config.study.eval_top_p) == (top_k, top_p)
        assert config.ppo.episode_end == "continue" and config.ppo.token_weighting == "reference_ids"
        assert tuple(config.ppo.formula_marker_ids) == (330, 60599, 794)
        assert config.data.answer_parser == "reference" and config.study.reset_grid == "reference"
        assert tuple(config.study.reference_ranks) == (2560, 3072, 3584)
        assert tuple(config.study.reference_layer_ranges) == ranges
        assert config.study.reference_layer_embed_head == embed_head
        assert config.ppo.max_grad_norm == 0.0  # the reference's 0.01 clip is a no-op under DeepSpeed
    else:
        assert config.study.recipe == "rotax" and config.ppo.max_grad_norm == 0.01
        assert (config.ppo.top_k, config.ppo.top_p, config.ppo.repetition_penalty) == (0, 1.0, 1.0)


@pytest.mark.parametrize("name", sorted(PER_MODEL))
def test_model_specific_numbers(name):
    config = load(name)
    lr, steps, updates, turns = PER_MODEL[name]
    assert config.sft.learning_rate == lr and config.sft.num_steps == steps
    assert config.ppo.num_updates == updates
    # one optimizer step per epoch over the reference's turns per update
    assert config.ppo.minibatch_size == turns
    schedule = make_schedule(config.sft, config.sft.num_steps)
    # the reference's DeepSpeed log warm-up over 376 steps (3% of its 12,501): 8.33e-7 at step 140
    assert float(schedule(375)) == pytest.approx(lr)
    assert float(schedule(139)) == pytest.approx(lr * math.log(140) / math.log(376), rel=1e-5)
    assert float(schedule(steps)) == pytest.approx(lr)  # constant after warm-up
    ppo_schedule = make_schedule(config.ppo, config.ppo.num_updates)
    assert float(ppo_schedule(0)) == pytest.approx(1e-6)
    assert float(ppo_schedule(updates)) == pytest.approx(1e-9, rel=1e-3)
    assert float(ppo_schedule(updates // 2)) == pytest.approx((1e-6 + 1e-9) / 2, rel=1e-3)


def test_study_checkpoint_schedules():
    from rotax.configs import llama3_2_11b_vision as llama
    from rotax.configs import qwen2_5_7b as qwen

    assert llama.STUDY_SFT_CHECKPOINTS == (0, 90, 140, 200) + tuple(range(300, 1700, 100))
    assert (llama.STUDY_PEAK_STEP, llama.STUDY_END_STEP) == (140, 1100)
    assert (qwen.STUDY_PEAK_STEP, qwen.STUDY_END_STEP) == (120, 800)
    assert {120, 800} <= set(qwen.STUDY_SFT_CHECKPOINTS)
    assert 1100 in load("llama3_2_11b_vision").study.ppo_starts


@pytest.mark.parametrize("name,devices,overrides", [
    ("llama3_2_11b_vision", 16, ()), ("llama3_2_11b_vision", 8, ()),
    ("llama3_2_11b_vision", 32, ("ppo.microbatch_size=32",)),
    ("qwen2_5_7b", 16, ()), ("qwen2_5_7b", 8, ()), ("qwen2_5_7b", 32, ("ppo.microbatch_size=32",)),
    ("small_real", 1, ())])
def test_batches_split_over_the_documented_meshes(name, devices, overrides):
    """The meshes of docs/scaling.md, with the overrides it names."""
    runnable_on(load(name, *overrides), devices)


def test_ppo_update_settings_accept_the_configs():
    from rotax.rl import ppo

    for name in REAL:
        settings = ppo.UpdateSettings.from_config(load(name).ppo)
        assert settings.epochs == 4 and settings.gamma == pytest.approx(0.9)


def test_overrides_and_unknown_keys():
    config = load("qwen2_5_7b", "mesh.shape=1,8,2", "ppo.kl_coef=0.05", "sft.num_steps=1200")
    assert tuple(config.mesh.shape) == (1, 8, 2)
    assert config.ppo.kl_coef == 0.05 and config.sft.num_steps == 1200
    with pytest.raises(run_config.ConfigKeyError, match="valid keys there"):
        load("llama3_2_11b_vision", "sft.learning_rat=1e-5")
    assert run_config.mesh_shape(load("small_real").mesh.shape, 1) == (1, 1, 1)


def test_small_real_fits_one_device_by_design():
    config = load("small_real")
    assert config.sft.batch_size // config.sft.grad_accum_steps == 8
    assert config.ppo.microbatch_size == 2
    assert math.isclose(config.sft.learning_rate, 1e-5)


def test_decay_steps_sets_the_cosine_horizon():
    # The toy base stops at step 800 of a 1,200-step cosine: lr(t) must follow the closed form
    # peak->end over 1,200 steps after a 120-step linear warm-up, not over the run's 800.
    from rotax.training.train_state import optimizer_config

    section = optimizer_config()
    section.update(dict(learning_rate=1.5e-3, end_learning_rate=1.5e-4, schedule="cosine",
                        warmup_steps=120, decay_steps=1200))
    schedule = make_schedule(section, 800)
    for t in (0, 60, 120, 500, 800, 1200):
        if t < 120:
            expected = 1.5e-3 * t / 120
        else:
            frac = (t - 120) / (1200 - 120)
            expected = 1.5e-4 + (1.5e-3 - 1.5e-4) * 0.5 * (1 + math.cos(math.pi * frac))
        assert float(schedule(t)) == pytest.approx(expected, rel=1e-5), t
    section.decay_steps = 0
    assert float(make_schedule(section, 800)(800)) == pytest.approx(1.5e-4, rel=1e-5)
