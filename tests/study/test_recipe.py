"""study.recipe: the switch keys of each recipe, the consistency check, and errors on unknown
values of every switch."""

import pytest

from rotax.configs import study_settings
from rotax.runtime import run_config
from rotax.study import recipe
from rotax.study.context import evaluation_options
from rotax.tasks.points import CompactRenderer, Rule
from rotax.tasks.points.environment import GeneralPointsEnvironment
from rotax.sampling import SamplingOptions


def test_check_recipe_accepts_each_config_and_names_disagreeing_keys():
    toy = run_config.load_config("toy")
    recipe.check_recipe(toy)
    assert toy.study.recipe == "rotax"
    toy.ppo.episode_end = "continue"
    with pytest.raises(ValueError, match=r"ppo.episode_end='continue' \(recipe: 'terminal'\).*custom"):
        recipe.check_recipe(toy)
    toy.study.recipe = "custom"
    recipe.check_recipe(toy)
    toy.study.recipe = "paper"
    with pytest.raises(ValueError, match="study.recipe 'paper'"):
        recipe.check_recipe(toy)
    qwen = run_config.load_config("qwen2_5_7b", ["study.eval_decoding=greedy"])
    with pytest.raises(ValueError, match="study.eval_decoding='greedy'"):
        recipe.check_recipe(qwen)


def test_unknown_switch_values_are_errors():
    with pytest.raises(ValueError, match="needs model="):
        study_settings.study_config(run_dir="r", sft_steps=10, ppo_updates=1, episodes_per_update=4,
                                    ppo_minibatch=4, recipe="reference", model="gpt2")
    with pytest.raises(ValueError, match="study.recipe 'best'"):
        study_settings.study_config(run_dir="r", sft_steps=10, ppo_updates=1, episodes_per_update=4,
                                    ppo_minibatch=4, recipe="best")
    with pytest.raises(ValueError, match="ppo.episode_end 'sometimes'"):
        GeneralPointsEnvironment(None, CompactRenderer(), Rule.ID, 4, SamplingOptions(), episode_end="sometimes")
    with pytest.raises(ValueError, match="ppo.token_weighting 'regex'"):
        GeneralPointsEnvironment(None, CompactRenderer(), Rule.ID, 4, SamplingOptions(), token_weighting="regex")
    study = run_config.load_config("toy").study
    study.eval_decoding = "beam"
    with pytest.raises(ValueError, match="study.eval_decoding 'beam'"):
        evaluation_options(study)
    study.eval_decoding, study.eval_temperature = "sampled", 0.0
    with pytest.raises(ValueError, match="eval_temperature > 0"):
        evaluation_options(study)
    env = GeneralPointsEnvironment(None, CompactRenderer(), Rule.ID, 4, SamplingOptions(), episode_end="continue")
    assert env.max_turns == 6


def test_resume_maps_the_recipe_keys_to_their_first_stage():
    from rotax.study.resume import changed_settings

    toy = run_config.config_to_dict(run_config.load_config("toy"))
    new = run_config.config_to_dict(run_config.load_config(
        "toy", ["study.recipe=custom", "study.reset_grid=reference", "study.reference_ranks=8,16"]))
    assert changed_settings(toy, new) == {"study.reset_grid": "resets", "study.reference_ranks": "resets"}
    sampled = run_config.config_to_dict(run_config.load_config("toy", ["study.eval_decoding=sampled"]))
    assert changed_settings(toy, sampled) == {"study.eval_decoding": "base"}
