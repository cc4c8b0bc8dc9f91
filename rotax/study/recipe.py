"""The two recipes a study can follow, as values of switch keys in several config sections.

``reference`` reproduces the study's public code (xiaodanguoguo/RL_Heals_SFT) where it differs
from rotax's own choices, quirks included; ``rotax`` keeps rotax's cleaner choices (the toy and
users' own studies). docs/reproducing-the-study.md lists every setting with its evidence.
``study.recipe`` names the recipe; :func:`check_recipe` (run by ``rotax study``) refuses a
config whose switch keys disagree with the recipe it names — set ``study.recipe=custom`` to mix.
"""

from __future__ import annotations

#: switch key (``section.key``) → value under each recipe
RECIPES = {
    "rotax": {
        "ppo.episode_end": "terminal",
        "ppo.token_weighting": "text_marker",
        "data.answer_parser": "lenient",
        "sft.warmup_shape": "linear",
        "study.eval_decoding": "greedy",
        "study.reset_grid": "rotax",
    },
    "reference": {
        "ppo.episode_end": "continue",
        "ppo.token_weighting": "reference_ids",
        "data.answer_parser": "reference",
        "sft.warmup_shape": "log",
        "study.eval_decoding": "sampled",
        "study.reset_grid": "reference",
    },
}
CUSTOM = "custom"


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def apply_recipe(config, name: str) -> None:
    """Sets every switch key of recipe ``name`` and ``study.recipe``; ValueError for an
    unknown name."""
    if name not in RECIPES:
        raise ValueError(f"study.recipe {name!r}: choose one of {sorted(RECIPES)} (or {CUSTOM!r})")
    for dotted, value in RECIPES[name].items():
        section, key = dotted.split(".")
        config[section][key] = value
    config.study.recipe = name


def check_recipe(config) -> None:
    """ValueError when ``study.recipe`` is unknown, or names a recipe some switch key
    disagrees with (each such key and both values listed)."""
    name = config.study.recipe
    if name == CUSTOM:
        return
    if name not in RECIPES:
        raise ValueError(f"study.recipe {name!r}: choose one of {sorted(RECIPES)} or {CUSTOM!r}")
    wrong = [f"{dotted}={_get(config, dotted)!r} (recipe: {value!r})"
             for dotted, value in RECIPES[name].items() if _get(config, dotted) != value]
    if wrong:
        raise ValueError(f"study.recipe={name!r} but " + "; ".join(wrong) +
                         f" — set those keys back or say --config.study.recipe={CUSTOM}")
