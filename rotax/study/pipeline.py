"""`rotax study`: base → SFT → PPO → analysis → resets → auto-select → report, resumable by stage.

Each stage writes ``<run_dir>/stages/<stage>.json`` when it finishes; a finished stage is not
redone (``force`` redoes it and every later stage). A killed stage resumes from its own
checkpoints; a forced one starts afresh: its working directories and the stage files of it and
every later stage are first moved (never deleted) to ``<run_dir>/replaced/<time>/``, so no later
stage resumes from checkpoints of the run being replaced. Resuming with other settings is
refused unless the forced stages redo what they change (:mod:`rotax.study.resume`). Stage
outputs are plain JSON so the report, a notebook or a test can read them without rotax's objects.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import ml_collections
from tqdm.auto import tqdm

from rotax.study.context import StudyContext
from rotax.study.stages import STAGE_FUNCTIONS, STAGES
from rotax.runtime.host import barrier
from rotax.runtime.run_config import config_to_dict, unique_path, write_resolved_config
from rotax.study.resume import check_resumable

log = logging.getLogger(__name__)

# what each stage writes and would resume from, relative to the run directory
# (SFT seed i > 0 trains in sft_seed{i}; seeds beyond 16 are not set aside by --force)
STAGE_DIRS = {"base": ("base_init", "pretrain", "base"), "sft": ("sft", *(f"sft_seed{i}" for i in range(1, 17))),
              "ppo": ("ppo", "controls"),
              "analysis": ("analysis",)}


def default_config() -> ml_collections.ConfigDict:
    """The ``study`` section.

    preset: ``""`` or ``"smoke"`` (every stage in ~2 minutes, for tests and CI). deck:
    ``toy`` (16 ranks incl. number cards 11-13) or ``standard``. eval_hands / reset_hands /
    probe_hands: hands per split along SFT, for the final table and resets, and for the
    auto-select probe set (disjoint seeds). eval_seeds: seeds of the final evaluation.
    attempts / max_new_tokens: the revision episode. ppo_starts: which SFT checkpoints PPO
    starts from (``peak``, ``mid``, ``end`` or step numbers; ``all`` for every checkpoint).
    ppo_seeds: PPO runs per start. sft_seeds: SFT runs (data orders), each with its own curve,
    peak, PPO starts and claim resets; the headline averages over them. controls: any of
    ``continued_sft``, ``ppo_kl_base``, ``ppo_shuffled`` (rotax.study.controls), run from the
    ``control_start`` checkpoint of the first ``control_sft_seeds`` SFT seeds (0: every SFT
    seed; the toy runs them on seed 0 only to fit its time budget); control_kl: the KL coefficient to the base. reset_reference: ``peak`` (the study's SFT_MaxOOD) or
    ``base``. null_seeds: matched-norm null draws per matrix. analysis_k: top-subspace size, a fraction in
    [0, 1] or a whole rank above 1 (``--config.study.analysis_k=64``). analysis_every: analyze
    the SFT checkpoints at multiples of this step (plus peak, mid and end); 0 analyzes all.

    recipe: ``rotax`` or ``reference`` (the study's code path) — names the values of the switch
    keys of :mod:`rotax.study.recipe` across sections; ``custom`` when they are mixed.
    eval_decoding: ``greedy`` or ``sampled`` with eval_temperature / eval_top_k / eval_top_p /
    eval_repetition_penalty. reset_grid: ``rotax`` (fractions of min(m, n), the seven layer
    matrix types, whole-layer resets) or ``reference`` (every 2-D tensor incl. embeddings and
    head at the absolute ranks reference_ranks, min(k, n); 2-D-only layer resets of
    reference_layer_ranges, plus embeddings/head when reference_layer_embed_head; a
    full-revert reverse test for every PPO run).
    autoselect_layers / autoselect_ranks / autoselect_operators / autoselect_budget_s: the
    gate's (``rotax.gate``) fixed layer resets, UV-merge grid, operators and time budget in the
    auto-select stage.
    """
    return ml_collections.ConfigDict({
        "preset": "",
        "deck": "toy",
        "eval_hands": 256,
        "reset_hands": 1024,
        "probe_hands": 256,
        "eval_seeds": (0, 1, 2),
        "attempts": 5,
        "max_new_tokens": 40,
        "eval_batch_size": 256,
        "sft_pool_hands": 2048,
        "ppo_starts": ("peak", "mid", "end"),
        "ppo_seeds": 1,
        "sft_seeds": 1,
        "controls": (),
        "control_start": "end",
        "control_sft_seeds": 0,
        "control_kl": 0.05,
        "reset_reference": "peak",
        "null_seeds": 2,
        "analysis_k": 0.2,
        "analysis_every": 0,
        "autoselect_layers": ("first 25%", "first 50%", "0-1", "last 25%"),
        "autoselect_ranks": (0.1, 0.2, 0.5),
        "recipe": "rotax",
        "eval_decoding": "greedy",
        "eval_temperature": 1.0,
        "eval_top_k": 0,
        "eval_top_p": 1.0,
        "eval_repetition_penalty": 1.0,
        "reset_grid": "rotax",
        "reference_ranks": (2560, 3072, 3584),
        "reference_layer_ranges": ("0-9",),
        "reference_layer_embed_head": False,
        "autoselect_operators": ("layer-reset", "uv-merge", "module-reset"),
        "autoselect_budget_s": 900.0,
        "progress": True,
    })


def apply_preset(config) -> None:
    """Shrinks any study config for ``study.preset == "smoke"``: every stage runs, at a tiny
    scale. The toy (a config with a ``pretrain`` section: rotax pre-trains its base) runs in
    ~2 minutes; a real model (``model.path``) gets a handful of steps, episodes and hands with
    short answers, so a 135M model finishes on a 2-core CPU (README: "On a real model")."""
    if config.study.preset in ("", None):
        return
    if config.study.preset != "smoke":
        raise ValueError(f"study.preset {config.study.preset!r}: choose '' or 'smoke'")
    if "pretrain" in config:
        _smoke_toy(config)
    else:
        _smoke_real_model(config)


def _smoke_toy(config) -> None:
    s = config.study
    s.eval_hands, s.reset_hands, s.probe_hands, s.eval_seeds = 32, 64, 32, (0,)
    # two attempts (not the toy's one) so the smoke run also exercises revision episodes
    s.attempts, s.sft_pool_hands, s.ppo_starts, s.ppo_seeds = 2, 256, ("peak", "end"), 1
    s.autoselect_layers, s.autoselect_ranks, s.null_seeds = ("first 25%", "last 25%"), (0.2,), 1
    s.autoselect_operators, s.autoselect_budget_s = ("layer-reset", "uv-merge"), 30.0
    s.sft_seeds = 2  # the per-seed paths and the means over SFT seeds
    s.controls = ("continued_sft", "ppo_kl_base", "ppo_shuffled")
    config.pretrain.num_steps, config.pretrain.checkpoint_every = 60, 60
    config.pretrain.decay_steps = 0
    config.sft.num_steps, config.sft.checkpoint_every, config.sft.eval_every = 40, 20, 20
    config.ppo.num_updates, config.ppo.checkpoint_every = 2, 2
    config.ppo.episodes_per_update, config.ppo.attempts = 16, 2


def _smoke_real_model(config) -> None:
    s = config.study
    s.eval_hands, s.reset_hands, s.probe_hands, s.eval_seeds = 4, 4, 4, (0,)
    s.attempts, s.max_new_tokens, s.eval_batch_size, s.sft_pool_hands = 1, 48, 4, 8
    s.ppo_starts, s.ppo_seeds = ("end",), 1
    s.autoselect_layers, s.autoselect_ranks, s.null_seeds = ("last 25%",), (0.2,), 1
    config.sft.update(dict(num_steps=2, batch_size=2, grad_accum_steps=1, checkpoint_every=1,
                           checkpoint_steps=(), eval_every=2, eval_hands=4, eval_batch_size=4,
                           probe_every=0, warmup_steps=0))
    config.ppo.update(dict(num_updates=1, checkpoint_every=1, eval_every=1, episodes_per_update=2,
                           attempts=1, minibatch_size=2, microbatch_size=2, rollout_batch_size=2,
                           max_new_tokens=48, eval_hands=4, eval_batch_size=4))


def _stage_file(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / f"{stage}.json"


def set_aside(run_dir: Path, stages, when: str) -> Path | None:
    """Moves the stage files and working directories of ``stages`` to
    ``run_dir/replaced/<when>/`` (same tree below it); returns that directory, or None when
    there was nothing to move."""
    target = unique_path(run_dir / "replaced" / when)  # forced twice within a second: when-1
    moved = []
    for stage in stages:
        for rel in (Path("stages") / f"{stage}.json", *map(Path, STAGE_DIRS.get(stage, ()))):
            if (run_dir / rel).exists():
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / rel).rename(target / rel)
                moved.append(str(rel))
    if not moved:
        return None
    log.warning("forced stages: moved %s to %s", ", ".join(moved), target)
    return target


def run_study(config, *, force: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> dict:
    """Runs every stage not yet finished; returns ``{stage: output}``. Apply
    :func:`apply_preset` first for a preset."""
    for name in force + only:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
    run_dir = Path(config.run_dir)
    first_forced = min((STAGES.index(f) for f in force), default=len(STAGES))
    # before config.json is rewritten: other settings must not resume this run's outputs
    check_resumable(run_dir, config_to_dict(config), STAGES, STAGE_DIRS, first_forced)
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, run_dir)
    if force:
        redone = [s for s in STAGES[first_forced:] if not only or s in only]
        if jax.process_index() == 0:  # shared storage: one process moves, every one waits
            set_aside(run_dir, redone, time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
        barrier("study: forced stages set aside")
    outputs: dict = {}
    context = StudyContext(config, run_dir)
    bar = tqdm(STAGES, desc="study", unit="stage", disable=not config.study.progress)
    for index, stage in enumerate(bar):
        bar.set_postfix_str(stage)
        path = _stage_file(run_dir, stage)
        if only and stage not in only:
            if path.is_file():
                outputs[stage] = json.loads(path.read_text())
            continue
        if path.is_file() and index < first_forced:
            outputs[stage] = json.loads(path.read_text())
            log.info("stage %s already finished (%s); skipping", stage, path)
            continue
        began = time.perf_counter()
        result = STAGE_FUNCTIONS[stage](context, outputs)
        result["seconds"] = time.perf_counter() - began
        outputs[stage] = result
        if jax.process_index() == 0:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2, default=_json_default))
            tmp.replace(path)  # atomic: a killed stage leaves no stage file
    return outputs


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
