"""The two settings that trim the toy's time budget: which SFT checkpoints the analysis stage
reads (``study.analysis_every``) and how many SFT seeds get the controls
(``study.control_sft_seeds``)."""

import ml_collections
import pytest

from rotax.study import stage_analysis, stage_ppo

SFT = {"checkpoints": list(range(0, 801, 50)), "peak_step": 50, "mid_step": 450, "end_step": 800}


def test_analysis_every_keeps_the_checkpoints_the_claims_read():
    # every 100th step, and the peak (50), mid (450) and end (800) although 50 and 450 are off the grid
    assert stage_analysis.analyzed_steps(SFT, 100) == [50, 100, 200, 300, 400, 450, 500, 600, 700, 800]
    assert stage_analysis.analyzed_steps(SFT, 0) == list(range(50, 801, 50))  # 0: all but the base
    with pytest.raises(ValueError, match="analysis_every=-1"):
        stage_analysis.analyzed_steps(SFT, -1)


class _Ctx:
    def __init__(self, control_sft_seeds):
        self.config = ml_collections.ConfigDict({"study": {
            "controls": ("continued_sft",), "control_start": "end", "control_sft_seeds": control_sft_seeds}})


@pytest.mark.parametrize("n, expected", [(0, [0, 1, 2]), (1, [0]), (2, [0, 1]), (5, [0, 1, 2])])
def test_controls_run_from_the_first_n_sft_seeds(monkeypatch, n, expected):
    calls = []
    monkeypatch.setattr(stage_ppo.control_runs, "continued_sft",
                        lambda ctx, step, sft_seed: (calls.append(sft_seed) or {}, "detail"))
    seeds = [{**SFT, "sft_seed": i} for i in range(3)]
    ctx = _Ctx(n)
    out = stage_ppo._controls(ctx, stage_ppo.control_seeds(ctx.config.study, {**seeds[0], "seeds": seeds}), [])
    assert calls == expected and [c["sft_seed"] for c in out] == expected


def test_a_negative_control_seed_count_is_refused():
    with pytest.raises(ValueError, match="control_sft_seeds=-1"):
        stage_ppo.control_seeds(_Ctx(-1).config.study, SFT)
