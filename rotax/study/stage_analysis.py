"""The analysis stage of `rotax study`: spectra and singular-vector rotation of every
checkpoint against the base and the peak-OOD checkpoint."""

from __future__ import annotations

import jax

from rotax.analysis import plots as spectral_plots
from rotax.analysis import spectral
from rotax.analysis.checkpoint_pairs import hf_matrices, orbax_matrices, paired_stream
from rotax.analysis.subspace import rank_setting
from rotax.io.checkpoint import stage_directory
from rotax.study.context import StudyContext


def run(ctx: StudyContext, outputs: dict) -> dict:
    """Every SFT checkpoint of SFT seed 0 (and its PPO end points) against the base and the peak-OOD checkpoint,
    each metric beside its matched-norm null."""
    s, sft = ctx.config.study, outputs["sft"]
    out_dir = ctx.run_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    # every model is a dict of lazy tensors: one module's tensors are read at a time
    abstract = ctx.abstract_params()
    sft_store = stage_directory(ctx.run_dir / "sft", "sft")
    targets = {f"sft_{step}": orbax_matrices(sft_store / str(step), abstract)
               for step in analyzed_steps(sft, int(s.analysis_every))}
    for run in outputs.get("ppo", {}).get("runs", []):
        if run.get("sft_seed"):
            continue  # the spectra are of SFT seed 0 and its PPO runs
        targets[run["label"]] = orbax_matrices(ctx.ppo_checkpoint(run), abstract, subtree=("policy",))
    # the base as SFT started from it (step 0, in the study's dtype) when that was saved
    base = orbax_matrices(sft_store / "0", abstract) if 0 in sft["checkpoints"] else hf_matrices(ctx.base_dir)[1]
    references = {"base": base, "peak": orbax_matrices(sft_store / str(sft["peak_step"]), abstract)}
    files, summaries = [], {}
    for ref_name, reference in references.items():
        chosen = {k: v for k, v in targets.items() if k != f"sft_{sft['peak_step']}" or ref_name != "peak"}
        result = spectral.analyze(paired_stream(reference, chosen), k=rank_setting(s.analysis_k),
                                  null_seeds=s.null_seeds,
                                  key=jax.random.key(ctx.config.seed), layer_ids=ctx.model_cfg.layer_ids,
                                  progress=s.progress)
        sub = out_dir / f"vs_{ref_name}"
        sub.mkdir(exist_ok=True)
        result.write_csv(sub / "metrics.csv")
        result.save_npz(sub / "arrays.npz")
        files += [str(p) for p in spectral_plots.plot_all(result, sub)]
        summaries[ref_name] = spectral.summarize(result.rows)
    return {"figures": files, "summary": summaries, "targets": sorted(targets)}


def analyzed_steps(sft: dict, every: int) -> list[int]:
    """SFT checkpoints to analyze: every one after step 0 when ``every`` is 0, else the
    multiples of ``every`` plus the peak-OOD, mid and end checkpoints the claims read."""
    if every < 0:
        raise ValueError(f"study.analysis_every={every}: need 0 (every checkpoint) or a step interval")
    keep = {sft["peak_step"], sft.get("mid_step"), sft["end_step"]}
    return [step for step in sft["checkpoints"] if step > 0 and (not every or step % every == 0 or step in keep)]
