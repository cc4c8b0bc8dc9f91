"""May this run directory be resumed with this config? A study resumed with other settings
would reuse finished stages (and checkpoints of a killed one) computed under the old ones.

:func:`changed_settings` maps each setting that differs between the run directory's
``config.json`` and the new config to the first stage that uses it; :func:`check_resumable`
refuses, naming them, unless the forced stages start at or before that stage. Settings that
change how a run is laid out or shown, not what it computes (``mesh``, ``run_dir``, progress
bars), are ignored; a setting this table does not know counts from the first stage.
"""

from __future__ import annotations

import json
from pathlib import Path

# dotted-key prefix -> first stage using it (the longest matching prefix wins)
FIRST_STAGE = {
    "seed": "base", "model": "base", "data": "base", "pretrain": "base",
    "sft": "sft", "ppo": "ppo",
    "study.deck": "base", "study.preset": "base", "study.eval_hands": "base", "study.attempts": "base",
    "study.max_new_tokens": "base", "study.eval_batch_size": "base",
    "study.sft_pool_hands": "sft", "study.sft_seeds": "sft",
    "study.ppo_starts": "ppo", "study.ppo_seeds": "ppo",
    "study.controls": "ppo", "study.control_start": "ppo", "study.control_kl": "ppo",
    "study.control_sft_seeds": "ppo", "study.eval_seeds": "ppo",
    "study.reset_hands": "ppo",  # PPO's final numbers are on the test hands too
    "study.analysis_k": "analysis", "study.analysis_every": "analysis", "study.null_seeds": "analysis",
    "study.reset_reference": "resets",
    "study.probe_hands": "autoselect", "study.autoselect_layers": "autoselect",
    "study.autoselect_ranks": "autoselect", "study.autoselect_operators": "autoselect",
    "study.autoselect_budget_s": "autoselect",
    "study.eval_decoding": "base", "study.eval_temperature": "base", "study.eval_top_k": "base",
    "study.eval_top_p": "base", "study.eval_repetition_penalty": "base",
    "study.reset_grid": "resets", "study.reference_ranks": "resets",
    "study.reference_layer_ranges": "resets", "study.reference_layer_embed_head": "resets",
}
# study.recipe only names the switch keys' values (checked by rotax.study.recipe.check_recipe)
IGNORED = ("mesh", "run_dir", "study.progress", "sft.progress", "ppo.progress", "pretrain.progress",
           "study.recipe")


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _first_stage(key: str) -> str:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        stage = FIRST_STAGE.get(".".join(parts[:n]))
        if stage is not None:
            return stage
    return "base"


def _changed(a: dict, b: dict) -> dict[str, str]:
    keys = sorted(k for k in a.keys() | b.keys()
                  if a.get(k, "<absent>") != b.get(k, "<absent>")
                  and not any(k == i or k.startswith(i + ".") for i in IGNORED))
    return {k: _first_stage(k) for k in keys}


def changed_settings(old: dict, new: dict) -> dict[str, str]:
    """``{dotted key: first stage using it}`` for every setting that differs (or exists on one
    side only) between two resolved configs, ignoring :data:`IGNORED`."""
    return _changed(_flatten(old), _flatten(new))


def check_resumable(run_dir: Path, new: dict, stages: tuple[str, ...], stage_dirs: dict,
                    first_forced: int) -> None:
    """Raises ``ValueError`` when ``run_dir`` holds outputs of a stage that a changed setting
    invalidates (that stage or a later one has a stage file or working directory) and the
    forced stages (from index ``first_forced`` of ``stages``) do not redo them."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    old_values, new_values = _flatten(json.loads(path.read_text())), _flatten(new)
    changed = _changed(old_values, new_values)
    if not changed:
        return
    first = min(stages.index(s) for s in changed.values())
    if first >= first_forced:
        return  # every invalidated stage is redone
    kept = [s for s in stages[first:]
            if (run_dir / "stages" / f"{s}.json").exists()
            or any((run_dir / d).exists() for d in stage_dirs.get(s, ()))]
    if not kept:
        return
    listed = "; ".join(f"{k}: {old_values.get(k, '<absent>')!r} -> {new_values.get(k, '<absent>')!r} "
                       f"(used from stage {s})" for k, s in changed.items())
    raise ValueError(
        f"{run_dir} holds a study run with other settings — {listed}. Its outputs of stage(s) "
        f"{', '.join(kept)} were computed with the old ones. Use another --config.run_dir, or "
        f"redo from there with --force {stages[first]} (the old outputs are moved to "
        f"{run_dir / 'replaced'}/, not deleted).")
