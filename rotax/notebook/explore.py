"""Open a study run (or two HF directories), compare their spectra, apply a reset, re-evaluate.

The engine of ``colab/explore_spectra.ipynb``; the notebook only calls these and shows the
results. Usable from any Python session::

    ex = explore.open_run("runs/toy")                  # or explore.open_hf(ref_dir, tgt_dir)
    result = ex.analyze()                              # rotax.analysis.spectral.SpectralResult
    edited = ex.reset("uv_merge", rank=0.2, layers="first 25%")
    rows = ex.compare({"UV merge top 20%": edited})    # reference, target, each edit

Evaluation goes through the study's own code (``StudyContext.evaluate_id_ood``: the same
seeded hand sets, greedy revision episodes and attempt budget), so a reset the study's grid
also ran gives the number in ``stages/resets.json``. Models load lazily and stay cached.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from rotax.analysis import resets
from rotax.analysis import spectral
from rotax.analysis import plots as spectral_plots
from rotax.analysis.selectors import Selector
from rotax.study.context import TEST_SEED_OFFSET, StudyContext
from rotax.analysis.subspace import rank_setting
from rotax.configs.study_settings import study_config
from rotax.configs.toy import get_config as toy_config
from rotax.io.hf import load_hf_checkpoint
from rotax.io.tokenizer import load_tokenizer
from rotax.runtime.run_config import apply_overrides, config_from_dict
from rotax.study.pipeline import apply_preset
from rotax.study.report import percent, recovered_fraction
from rotax.tasks.points.toy_tokenizer import is_toy_tokenizer

RESETS = ("uv_merge", "triplet_swap", "sigma_only", "reset_layers")
_RESET_TITLES = {"uv_merge": "UV merge", "triplet_swap": "triplet swap", "sigma_only": "Σ-only",
                 "reset_layers": "layer reset"}


class Explorer:
    """Named models of one run (or pair), the study's evaluation settings and a figure folder.

    ``models``: ``{name: loader() -> params}``; ``reference`` / ``target``: the default pair;
    ``out_dir``: where figures go (a fresh temporary folder by default)."""

    def __init__(self, ctx: StudyContext, models: Mapping[str, Callable], reference: str,
                 target: str, out_dir=None):
        self.ctx, self._loaders = ctx, dict(models)
        self.reference, self.target = reference, target
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="rotax-explore-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._params: dict[str, object] = {}
        self._scores: dict[tuple, dict] = {}

    @property
    def names(self) -> list[str]:
        return list(self._loaders)

    @property
    def model_cfg(self):
        return self.ctx.model_cfg

    @property
    def study(self):
        """The ``study`` config section (hands, seeds, attempts, ``analysis_k``, ...)."""
        return self.ctx.config.study

    def params(self, name: str):
        """The parameter tree of model ``name`` (loaded once)."""
        if name not in self._loaders:
            raise KeyError(f"no model {name!r}; models: {', '.join(self._loaders)}")
        if name not in self._params:
            self._params[name] = self._loaders[name]()
        return self._params[name]

    def layer_kwargs(self) -> dict:
        cfg = self.model_cfg
        return {"layer_ids": cfg.layer_ids, "num_hidden_layers": cfg.num_hidden_layers}

    # ------------------------------------------------------------ analysis

    def analyze(self, reference: str | None = None, target: str | None = None, *,
                k: float | int | None = None, null_seeds: int | None = None) -> spectral.SpectralResult:
        """:func:`rotax.analysis.spectral.analyze` of ``target`` against ``reference`` (rows labelled with
        the target's name), with the study's ``analysis_k``, ``null_seeds`` and key unless given."""
        reference, target = reference or self.reference, target or self.target
        s = self.study
        return spectral.analyze(self.params(reference), {target: self.params(target)},
                                k=rank_setting(s.analysis_k) if k is None else k,
                                null_seeds=s.null_seeds if null_seeds is None else null_seeds,
                                key=jax.random.key(self.ctx.config.seed),
                                layer_ids=self.model_cfg.layer_ids)

    def figures(self, result: spectral.SpectralResult, tensors: Sequence[str] | None = None,
                metrics: Sequence[str] = ("sigma_drift", "chordal_norm_u")) -> list[Path]:
        """Spectra, band rotation and drift-vs-rotation figures (``spectral_plots.plot_all``)
        plus a layer × module heatmap per metric; returns the PNG paths."""
        stem = f"{result.rows[0]['target']}" if result.rows else "empty"
        out = self.out_dir / stem
        paths = spectral_plots.plot_all(result, out, tensors)
        for metric in metrics:
            if any(r["layer"] is not None for r in result.rows):
                paths.append(spectral_plots.plot_angle_heatmap(result.rows, out / f"heatmap_{metric}.png",
                                                               metric=metric))
        return paths

    # ------------------------------------------------------------ resets

    def reset(self, kind: str, *, reference: str | None = None, target: str | None = None,
              rank: float | int = 0.2, tail: float | int = 0, layers="all", modules=None,
              include_embeddings: bool = False, include_head: bool = False):
        """``kind`` (one of :data:`RESETS`) applied to ``target`` with ``reference``'s weights.

        ``rank`` / ``tail``: top / bottom ranks restored (float = fraction of ``min(m, n)``)
        for the SVD operators; ``layers``: HF layer spec (``"all"``, ``"0-1"``, ``"first
        25%"``, ...); ``modules``: ``"q,k,v"`` etc. (None = the seven per-layer matrices);
        ``include_embeddings`` / ``include_head``: for ``reset_layers`` only."""
        t, r = self.params(target or self.target), self.params(reference or self.reference)
        kw = self.layer_kwargs()
        layers = None if layers in ("", "all", None) else layers
        if kind == "reset_layers":
            if modules:
                raise ValueError("reset_layers resets whole layers; modules select matrices for "
                                 "the SVD resets only")
            return resets.reset_layers(t, r, layers, include_embeddings, include_head, **kw)
        if kind not in RESETS:
            raise ValueError(f"unknown reset {kind!r}; choose one of {', '.join(RESETS)}")
        selector = Selector(layers=layers, modules=modules or None)
        return getattr(resets, kind)(t, r, selector, rank, tail, **kw)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, params, *, hands: int | None = None, seeds: Sequence[int] | None = None,
                 cache_key: str | None = None) -> dict:
        """``{"id": acc, "ood": acc}`` on ``hands`` hands per seed (default: the study's
        ``reset_hands`` × ``eval_seeds``); ``cache_key`` memoizes the result."""
        s = self.study
        hands = int(hands or s.reset_hands)
        seeds = tuple(int(x) for x in (seeds or s.eval_seeds))
        key = (cache_key, hands, seeds)
        if cache_key is not None and key in self._scores:
            return self._scores[key]
        acc = self.ctx.evaluate_id_ood(params, n=hands, seeds=seeds, seed_offset=TEST_SEED_OFFSET)
        if cache_key is not None:
            self._scores[key] = acc
        return acc

    def compare(self, edits: Mapping[str, object], *, reference: str | None = None,
                target: str | None = None, hands: int | None = None,
                seeds: Sequence[int] | None = None) -> list[dict]:
        """Rows ``{"name", "id", "ood", "recovered", "seconds"}`` for the reference, the target
        (before) and each of ``edits`` (``{label: params}``, after). ``recovered``: the share
        of the reference-to-target OOD gap an edit wins back (None without a gap)."""

        reference, target = reference or self.reference, target or self.target
        rows = []
        for label, name, params in ([(f"reference: {reference}", reference, None),
                                     (f"target: {target}", target, None)]
                                    + [(label, None, p) for label, p in edits.items()]):
            began = time.perf_counter()
            acc = self.evaluate(self.params(name) if name else params, hands=hands, seeds=seeds,
                                cache_key=name)
            rows.append({"name": label, "id": acc["id"], "ood": acc["ood"],
                         "seconds": time.perf_counter() - began})
        ref_ood, tgt_ood = rows[0]["ood"]["mean"], rows[1]["ood"]["mean"]
        for row in rows:
            row["recovered"] = recovered_fraction(None, ref_ood, tgt_ood, row["ood"]["mean"])
        return rows

    def plot_comparison(self, rows: Sequence[dict], path=None) -> Path:
        """Bars of ID / OOD accuracy (95% CI) and mean reward per row of :meth:`compare`."""
        fig = spectral_plots._figure(1.5 + 1.4 * len(rows), 3.8)
        acc_ax, reward_ax = fig.subplots(1, 2)
        x, width = np.arange(len(rows)), 0.38
        for i, split in enumerate(("id", "ood")):
            means = np.array([r[split]["mean"] for r in rows])
            lo = np.array([r[split]["ci"][0] for r in rows])
            hi = np.array([r[split]["ci"][1] for r in rows])
            offset = (i - 0.5) * width
            acc_ax.bar(x + offset, means, width, yerr=[means - lo, hi - means], capsize=3,
                       color=f"C{i}", label=split.upper())
            reward_ax.bar(x + offset, [r[split]["mean_reward"] for r in rows], width, color=f"C{i}",
                          label=split.upper())
        for ax, title in ((acc_ax, "accuracy within the attempt budget (95% CI)"),
                          (reward_ax, "mean reward per episode")):
            ax.set_xticks(x, [_short(r["name"]) for r in rows], rotation=20, ha="right", fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        acc_ax.set_ylim(0, 1)
        return spectral_plots._save(fig, path or self.out_dir / "comparison.png")


def reset_label(kind: str, rank=0.2, tail=0, layers="all", modules=None) -> str:
    """A row label such as ``"UV merge top 20% (layers all)"``."""
    title = _RESET_TITLES.get(kind, kind)
    if kind == "reset_layers":
        return f"{title} (layers {layers or 'all'})"
    where = f"layers {layers or 'all'}" + (f", modules {modules}" if modules else "")
    amount = f"top {_amount(rank)}" + (f" + tail {_amount(tail)}" if tail else "")
    return f"{title} {amount} ({where})"


def _amount(x) -> str:
    return f"{x:.0%}" if isinstance(x, float) else str(x)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def table_markdown(rows: Sequence[dict]) -> str:
    """The before/after table of :meth:`Explorer.compare` as Markdown."""
    lines = ["| model | ID acc % [95% CI] | OOD acc % [95% CI] | ID / OOD first attempt % | "
             "ID / OOD mean reward | % of OOD gap recovered |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{percent(r[s]['mean'])} [{percent(r[s]['ci'][0])}, {percent(r[s]['ci'][1])}]" for s in ("id", "ood")]
        first = f"{percent(r['id']['first_attempt'])} / {percent(r['ood']['first_attempt'])}"
        reward = f"{r['id']['mean_reward']:.3f} / {r['ood']['mean_reward']:.3f}"
        rec = "—" if r.get("recovered") is None else f"{100 * r['recovered']:.0f}"
        lines.append(f"| {r['name']} | {cells[0]} | {cells[1]} | {first} | {reward} | {rec} |")
    return "\n".join(lines)


def summary_markdown(result: spectral.SpectralResult) -> str:
    """Per module type: mean Σ drift, chordal distances of the top-k U / V and their
    matched-norm nulls (``spectral.summarize``) as Markdown."""
    metrics = ("sigma_drift", "chordal_norm_u", "chordal_norm_v")
    entries = spectral.summarize(result.rows, metrics)
    lines = ["| target | module | matrices | " + " | ".join(f"{m} (null)" for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for e in entries:
        cells = [f"{e[m]:.4f}" + (f" ({e[f'null_{m}']:.4f})" if f"null_{m}" in e else "") for m in metrics]
        lines.append(f"| {e['target']} | {e['module']} | {e['matrices']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- opening runs and pairs


def open_run(run_dir, *, out_dir=None) -> Explorer:
    """The models of a ``rotax study`` run directory: ``base``, ``sft_<step>`` per SFT
    checkpoint and ``ppo_<label>`` per PPO run; default pair = the study's reset reference
    (peak-OOD SFT checkpoint or base) and the SFT end."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a study run directory (no config.json)")
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    config.run_dir = str(run_dir)
    ctx = StudyContext(config, run_dir)
    stages = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "stages").glob("*.json"))}
    models: dict[str, Callable] = {"base": ctx.base_params}
    sft = stages.get("sft")
    for step in (sft or {}).get("checkpoints", []):
        models[f"sft_{step}"] = lambda step=step: ctx.sft_params(step)
    for run in stages.get("ppo", {}).get("runs", []):
        if run.get("sft_seed"):
            continue  # SFT seed 0's checkpoints and PPO runs (the ones the spectra are of)
        models[f"ppo_{run['label']}"] = lambda run=run: ctx.load_ppo_params(run)
    if sft:
        reference = "base" if config.study.reset_reference == "base" else f"sft_{sft['peak_step']}"
        target = f"sft_{sft['end_step']}"
    else:
        reference = target = "base"
    return Explorer(ctx, models, reference, target, out_dir)


def open_hf(reference_dir, target_dir, *, overrides: Sequence[str] = (), out_dir=None) -> Explorer:
    """A reference and a fine-tuned HF directory (loaded with :func:`rotax.io.hf.load_hf_checkpoint`; tokenizer
    and chat template from the target). Evaluation settings: the toy config's when the
    tokenizer is the toy's, else the study's real-model settings; ``overrides`` are
    ``"section.key=value"`` strings on top (``"study.preset=smoke"`` applies the preset,
    ``"model.param_dtype=bfloat16"`` halves the memory of a large pair)."""
    if is_toy_tokenizer(load_tokenizer(target_dir)):
        config = toy_config()
    else:
        config = study_config(run_dir=str(target_dir), sft_steps=1, ppo_updates=1,
                              episodes_per_update=1, ppo_minibatch=1)
    config.model.path = str(target_dir)
    config.study.progress = False
    apply_overrides(config, overrides)
    apply_preset(config)
    apply_overrides(config, overrides)  # as on the command line: overrides win over the preset
    ctx = StudyContext(config, Path(target_dir), base_dir=target_dir)
    m = config.model

    def load(path):
        return lambda: load_hf_checkpoint(path, mesh=ctx.mesh, dtype=m.param_dtype or None,
                                     compute_dtype=m.compute_dtype or None)[1]

    return Explorer(ctx, {"reference": load(reference_dir), "target": load(target_dir)},
                    "reference", "target", out_dir)


def open_models(run_dir: str = "", hf_reference: str = "", hf_target: str = "", *,
                overrides: Sequence[str] = (), out_dir=None) -> Explorer:
    """:func:`open_run` when ``run_dir`` is given, else :func:`open_hf` on the two HF dirs."""
    if run_dir:
        return open_run(run_dir, out_dir=out_dir)
    if not (hf_reference and hf_target):
        raise ValueError("give a study run directory, or both an HF reference and an HF target")
    return open_hf(hf_reference, hf_target, overrides=overrides, out_dir=out_dir)


# ---------------------------------------------------------------- ipywidgets panel


def panel(ex: Explorer, *, hands: int | None = None, seeds: Sequence[int] | None = None):
    """Controls over ``ex`` (needs ``ipywidgets``): pick the pair and k and analyze; browse
    spectra per tensor and heatmaps per metric; pick a reset and its parameters, apply and
    re-evaluate. Returns the widget; ``widget.state`` holds the latest ``result`` / ``rows``
    and ``widget.controls`` the individual controls (for scripted use)."""
    import ipywidgets as w
    from IPython.display import Image, Markdown, display

    state: dict = {}
    c = dict(
        reference=w.Dropdown(options=ex.names, value=ex.reference, description="reference"),
        target=w.Dropdown(options=ex.names, value=ex.target, description="target"),
        k=w.FloatSlider(value=float(ex.study.analysis_k), min=0.05, max=0.5, step=0.05,
                        description="top-k frac"),
        analyze=w.Button(description="analyze", button_style="info"),
        tensor=w.Dropdown(options=[], description="tensor"),
        metric=w.Dropdown(options=["sigma_drift", "chordal_norm_u", "chordal_norm_v",
                                   "magnitude_share", "rotation_share"], description="heatmap"),
        kind=w.Dropdown(options=RESETS, value="uv_merge", description="reset"),
        rank=w.FloatSlider(value=0.2, min=0.0, max=1.0, step=0.05, description="top rank frac"),
        tail=w.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="tail frac"),
        layers=w.Text(value="all", description="layers"),
        modules=w.Text(value="", description="modules", placeholder="q,k,v (empty: all 7)"),
        hands=w.IntText(value=int(hands or ex.study.reset_hands), description="hands"),
        apply=w.Button(description="apply & evaluate", button_style="success"))
    spectra_out, reset_out = w.Output(), w.Output()

    def show_spectra(_=None):
        result = state.get("result")
        if result is None or not c["tensor"].value:
            return
        label = result.rows[0]["target"]
        spectra_out.clear_output(wait=True)
        with spectra_out:
            display(Image(filename=str(spectral_plots.plot_spectra(
                result, [c["tensor"].value], ex.out_dir / "panel_spectra.png", target=label))))
            if any(r["layer"] is not None for r in result.rows):
                display(Image(filename=str(spectral_plots.plot_angle_heatmap(
                    result.rows, ex.out_dir / "panel_heatmap.png", metric=c["metric"].value))))

    def analyze(_=None):
        state["result"] = ex.analyze(c["reference"].value, c["target"].value, k=c["k"].value)
        tensors = [r["tensor"] for r in state["result"].rows]
        c["tensor"].options = tensors
        c["tensor"].value = tensors[0]
        show_spectra()

    def apply(_=None):
        layers, modules = c["layers"].value.strip(), c["modules"].value.strip() or None
        modules = None if c["kind"].value == "reset_layers" else modules  # whole layers
        label = reset_label(c["kind"].value, c["rank"].value, c["tail"].value, layers, modules)
        edited = ex.reset(c["kind"].value, reference=c["reference"].value, target=c["target"].value,
                          rank=c["rank"].value, tail=c["tail"].value, layers=layers, modules=modules)
        state["rows"] = ex.compare({label: edited}, reference=c["reference"].value,
                                   target=c["target"].value, hands=c["hands"].value, seeds=seeds)
        reset_out.clear_output(wait=True)
        with reset_out:
            display(Markdown(table_markdown(state["rows"])))
            display(Image(filename=str(ex.plot_comparison(state["rows"], ex.out_dir / "panel_comparison.png"))))

    c["analyze"].on_click(analyze)
    c["apply"].on_click(apply)
    c["tensor"].observe(show_spectra, names="value")
    c["metric"].observe(show_spectra, names="value")
    box = w.VBox([w.HBox([c["reference"], c["target"], c["k"], c["analyze"]]),
                  w.HBox([c["tensor"], c["metric"]]), spectra_out,
                  w.HBox([c["kind"], c["rank"], c["tail"]]),
                  w.HBox([c["layers"], c["modules"], c["hands"], c["apply"]]), reset_out])
    box.state, box.controls = state, c
    return box
