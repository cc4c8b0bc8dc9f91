"""The settings the real-model configs share: the study's SFT, PPO and evaluation recipe
(SPEC §1–3) on top of each module's ``default_config()``.

Not a config file itself (no ``get_config``); ``llama3_2_11b_vision.py``, ``qwen2_5_7b.py`` and
``small_real.py`` call :func:`study_config` with what differs per model (lengths, PPO batch
sizes, where PPO starts) and adjust only what :func:`study_config` does not take. Every value
that reproduces the study is set here explicitly, even where it equals a module default, so a
changed default cannot silently change a reproduction; docs/reproducing-the-study.md maps each
one to the paper.
"""

from __future__ import annotations

import ml_collections

from rotax.io import base_model
from rotax.rl.ppo import config as ppo_settings
from rotax.runtime import run_config
from rotax.sft import step as sft_step
from rotax.sft import data as sft_data
from rotax.study import pipeline as study_pipeline
from rotax.study.recipe import apply_recipe
from rotax.tasks.points.environment import REFERENCE_MARKER_IDS

#: Evaluation hands per rule, their seed, attempts per hand and tokens per answer (SPEC §1).
EVAL_HANDS = 234
EVAL_SEED = 42
ATTEMPTS = 5
MAX_NEW_TOKENS = 256
#: The reference's rollout budget per answer during RL (its RL configs: max_new_tokens 512).
PPO_MAX_NEW_TOKENS = 512

#: Sampling defaults of each checkpoint's ``generation_config.json`` (Hugging Face model files,
#: not in the reference repository). The reference's ``generate`` calls take them from there
#: (its RL passes only temperature 0.2 and max_new_tokens; its evaluator only max_new_tokens);
#: HF's default ``top_k`` of 50 applies where the file sets none.
GENERATION_CONFIGS = {
    "llama3_2_11b_vision": {"temperature": 0.6, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.0},
    "qwen2_5_7b": {"temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05},
}
#: The reference's layer-reset ranges (``analysis/run_parallel-layer*.sh``, HF layer numbers;
#: Qwen's "20-29" cut to its 28 layers) and whether its script's parameter names also reset the
#: embeddings and LM head (``always_replace`` names Mllama's ``language_model.*`` tensors only).
REFERENCE_LAYER_RESETS = {
    "llama3_2_11b_vision": (("0-9", "10-19", "20-29", "30-39"), True),
    "qwen2_5_7b": (("0-9", "10-19", "20-27"), False),
}
#: The reference's UV-merge ranks (``analysis/params-dir.txt``).
REFERENCE_RANKS = (2560, 3072, 3584)
#: DeepSpeed's log warm-up length in the study's SFT log: ceil(0.03 × 12,501 steps).
REFERENCE_WARMUP_STEPS = 376


def study_config(*, run_dir: str, sft_steps: int, ppo_updates: int,
                 episodes_per_update: int, ppo_minibatch: int, ppo_every: int = 10,
                 rollout_batch_size: int | None = None,
                 ppo_starts: tuple = ("peak", "end"), recipe: str = "rotax",
                 model: str = "") -> ml_collections.ConfigDict:
    """A full run config with the study's recipe.

    ``sft_steps``: SFT optimizer steps. ``ppo_updates``: PPO updates (rollout + 4 epochs).
    ``episodes_per_update``: revision episodes collected per update. ``ppo_minibatch``: time
    steps (turns) per PPO optimizer step. The reference runs 4 processes, each collecting a
    fixed number of turns per update, and takes one optimizer step per epoch over all of them;
    the model configs set ``episodes_per_update`` to its turns per process (rotax collects
    whole episodes, 1-5 turns each) and ``ppo_minibatch`` to 4 × that.
    ``ppo_every``: PPO updates between checkpoints and between evaluations (the same, so every
    evaluated update has a checkpoint). ``rollout_batch_size``: rows per sampler call (default
    ``episodes_per_update``: an update's first attempts in one call). ``ppo_starts``: the SFT
    checkpoints PPO runs from (``"peak"``, ``"end"`` or a step). ``model.path`` is left empty:
    give the local HF directory with ``--config.model.path=...`` (rotax never downloads).
    ``recipe``: ``rotax`` or ``reference`` (:mod:`rotax.study.recipe`; the reference needs
    ``model``, a key of :data:`GENERATION_CONFIGS`, for its sampling and reset ranges)."""
    config = run_config.default_config()
    config.run_dir = run_dir
    config.seed = 0
    config.mesh.shape = (1, -1, 1)  # all devices on fsdp; see docs/scaling.md

    config.model = base_model.default_config()
    config.model.update(dict(path="", param_dtype="float32", compute_dtype="bfloat16", remat=True))

    config.data = sft_data.default_config()
    config.data.update(dict(source="general_points", rules=("id",), renderer="json_chat",
                            solution_choice="random", bucket=64, max_length=1024))

    # SFT (SPEC §2): AdamW (0.9, 0.98), eps 1e-7, no weight decay, lr 1e-6, ~3% linear warm-up
    # then constant, 64 sequences per step, bf16 compute over fp32 master weights.
    config.sft = sft_step.default_config()
    config.sft.update(dict(
        num_steps=sft_steps, batch_size=64, grad_accum_steps=1,
        learning_rate=1e-6, schedule="constant", warmup_fraction=0.03, warmup_steps=-1,
        end_learning_rate=0.0, b1=0.9, b2=0.98, eps=1e-7, weight_decay=0.0,
        max_grad_norm=1.0,  # transformers.Trainer's default; the study does not change it
        checkpoint_every=100, checkpoint_initial=True, keep_checkpoints=0,
        eval_every=100, eval_hands=EVAL_HANDS, eval_seeds=(EVAL_SEED,), eval_batch_size=64,
        select_metric="ood_accuracy",
    ))

    # PPO (SPEC §3): GAE 0.9/0.95, clip 0.1, value loss x0.5 clipped at 0.1, rollout
    # temperature 0.2, tokens before the formula key weighted 0.5, 4 epochs, Adam lr 1e-6
    # cosine to 1e-9 over the updates, grad-norm clip 0.01, no KL, no entropy bonus.
    # microbatch_size 16 = one full-length row per device on 16 devices (docs/scaling.md);
    # on 32 devices give --config.ppo.microbatch_size=32.
    config.ppo = ppo_settings.default_config()
    config.ppo.update(dict(
        num_updates=ppo_updates, episodes_per_update=episodes_per_update, attempts=ATTEMPTS,
        rule="id", temperature=0.2, top_k=0, top_p=1.0, max_new_tokens=PPO_MAX_NEW_TOKENS,
        gamma=0.9, gae_lambda=0.95, epochs=4, minibatch_size=ppo_minibatch, microbatch_size=16,
        clip_epsilon=0.1, value_clip_epsilon=0.1, value_coef=0.5, entropy_coef=0.0,
        kl_coef=0.0, pre_formula_weight=0.5, formula_marker="",
        learning_rate=1e-6, schedule="cosine", warmup_steps=0, warmup_fraction=0.0,
        end_learning_rate=1e-9, b1=0.9, b2=0.999, eps=1e-7, weight_decay=0.0, max_grad_norm=0.01,
        eval_hands=EVAL_HANDS, eval_seeds=(EVAL_SEED,),
        rollout_batch_size=rollout_batch_size or episodes_per_update,
        checkpoint_every=ppo_every, eval_every=ppo_every,
    ))

    # The pipeline: standard 13-rank deck, the study's evaluation sets, analysis against the
    # peak-OOD SFT checkpoint with k as a fraction of min(m, n), resets onto the SFT end.
    config.study = study_pipeline.default_config()
    config.study.update(dict(
        deck="standard", eval_hands=EVAL_HANDS, reset_hands=EVAL_HANDS, probe_hands=EVAL_HANDS,
        eval_seeds=(EVAL_SEED,), attempts=ATTEMPTS, max_new_tokens=MAX_NEW_TOKENS,
        eval_batch_size=64, sft_pool_hands=sft_steps * 64,
        ppo_starts=tuple(ppo_starts), ppo_seeds=1, reset_reference="peak",
        analysis_k=0.2, null_seeds=2,
    ))
    if recipe == "reference":
        _reference_recipe(config, model)
    else:
        apply_recipe(config, recipe)
    return config


def _reference_recipe(config, model: str) -> None:
    """The study's code path (docs/reproducing-the-study.md lists each value's evidence)."""
    if model not in GENERATION_CONFIGS:
        raise ValueError(f"the reference recipe needs model= one of {sorted(GENERATION_CONFIGS)}, "
                         f"got {model!r}")
    apply_recipe(config, "reference")
    generation = GENERATION_CONFIGS[model]
    # rollouts: the checkpoint's sampling at the RL temperature 0.2, incl. its repetition penalty
    config.ppo.update(dict(top_k=generation["top_k"], top_p=generation["top_p"],
                           repetition_penalty=generation["repetition_penalty"],
                           formula_marker_ids=REFERENCE_MARKER_IDS,
                           # its clip_grad_norm_(0.01) is a no-op under DeepSpeed (accelerate
                           # returns at once); DeepSpeed's own clipping is in a file not published
                           max_grad_norm=0.0))
    config.sft.warmup_steps = REFERENCE_WARMUP_STEPS
    ranges, embed_head = REFERENCE_LAYER_RESETS[model]
    config.study.update(dict(
        eval_temperature=generation["temperature"], eval_top_k=generation["top_k"],
        eval_top_p=generation["top_p"], eval_repetition_penalty=generation["repetition_penalty"],
        reference_ranks=REFERENCE_RANKS, reference_layer_ranges=ranges,
        reference_layer_embed_head=embed_head))


def checkpoint_schedule(first: tuple[int, ...], every: int, last: int) -> tuple[int, ...]:
    """``first`` followed by every multiple of ``every`` above ``max(first)`` up to ``last``
    (the study's uneven SFT checkpoint lists)."""
    start = (max(first) // every + 1) * every
    return tuple(first) + tuple(range(start, last + 1, every))
