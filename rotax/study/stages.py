"""The stages of `rotax study` in order. Each ``run(context, outputs) -> dict`` (one module per
stage) reads the outputs of earlier stages (JSON dicts) and returns its own."""

from __future__ import annotations

from rotax.study import (stage_analysis, stage_autoselect, stage_base, stage_ppo, stage_report,
                         stage_resets, stage_sft)

STAGE_FUNCTIONS = {
    "base": stage_base.run,
    "sft": stage_sft.run,
    "ppo": stage_ppo.run,
    "analysis": stage_analysis.run,
    "resets": stage_resets.run_reset_grid,
    "autoselect": stage_autoselect.run,
    "report": stage_report.run,
}
STAGES = tuple(STAGE_FUNCTIONS)
