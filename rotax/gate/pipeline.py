"""The gate end to end: check inputs, score, diagnose, search, decide, export, report.

:func:`gate` is the core on parameter trees already loaded (the study's auto-select stage calls
it with its own probe scorers); :func:`run_gate` is ``rotax gate``: it validates every input
before any model work (:func:`check_inputs`), loads both HF directories onto the mesh, runs
:func:`gate`, exports the repaired model and writes the report.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from rotax.analysis.resets import check_compatible
from rotax.gate import decision as decision_lib
from rotax.gate import report as report_lib
from rotax.gate.diagnosis import diagnose
from rotax.gate.probes import Probe, load_probe
from rotax.gate.scoring import make_scorers
from rotax.gate.search import candidates, choose, parse_operators, run_search
from rotax.io.checkpoint import restore_model_params
from rotax.io.hf import export_hf_checkpoint, load_hf_checkpoint
from rotax.io.tokenizer import load_tokenizer
from rotax.models.config import ModelConfig
from rotax.models.decoder import param_shapes, sharded_param_shapes
from rotax.runtime.sharding import make_mesh
from rotax.tasks.points.toy_tokenizer import is_toy_tokenizer


@dataclasses.dataclass
class GateSettings:
    """What ``rotax gate`` takes besides the two models and the output directory.

    probe / id_probe: built-in name or JSONL path; score: ``nll`` or ``match`` (JSONL probes);
    budget_s: seconds for the whole run (the search gets what scoring and diagnosis left);
    target: recovered share the interval's lower bound must reach; max_id_cost: ID score the
    reset may lose (upper bound of its interval; accuracy share, or nats/token for NLL);
    operators: which operators the search may use; seed: the probe split; hands: per half of
    a built-in probe; attempts / max_new_tokens: GeneralPoints episodes; batch_size: rows per
    forward pass; k / null_seeds / threshold: the diagnosis; fixed_layers: layer resets always
    tried; ranks: the UV-merge grid's top fractions; tie_share: a later candidate must beat
    an earlier one by more than this share of the selection-half loss to be chosen (scores
    within noise keep the more targeted, earlier candidate); draws: bootstrap draws."""

    probe: str = "general-points:ood"
    id_probe: str | None = None
    score: str = "nll"
    budget_s: float = 600.0
    target: float = 0.7
    max_id_cost: float = 0.05
    operators: tuple[str, ...] | str | None = None
    seed: int = 0
    hands: int = 256
    attempts: int = 1
    max_new_tokens: int | None = None
    batch_size: int = 16
    k: float = 0.2
    null_seeds: int = 2
    threshold: float = 1.2
    fixed_layers: tuple[str, ...] = ("first 25%",)
    ranks: tuple[float, ...] = (0.1, 0.2, 0.5)
    tie_share: float = 0.02
    draws: int = 2000
    dtype: str | None = None
    progress: bool = True


@dataclasses.dataclass
class Inputs:
    """What :func:`check_inputs` validated: the config, tokenizer, probes and their scorers."""

    cfg: ModelConfig
    tokenizer: object
    probe: Probe
    id_probe: Probe | None
    scorers: tuple
    id_scorers: tuple | None
    operators: tuple[str, ...]


def check_inputs(base_dir, tuned_dir, out_dir, settings: GateSettings, mesh=None) -> Inputs:
    """Every check that needs no model weights, in order: operators, directories, configs
    (architecture, then every tensor's shape, named), tokenizer, probe files (line numbers),
    example lengths against the model's context. Raises ValueError / FileNotFoundError."""
    operators = parse_operators(settings.operators)
    if not 0 < settings.target <= 1:
        raise ValueError(f"--target {settings.target}: must lie in (0, 1]")
    if settings.budget_s <= 0:
        raise ValueError(f"--budget-s {settings.budget_s}: must be positive")
    for directory in (base_dir, tuned_dir):
        if not (is_hf_dir(directory) or is_rotax_checkpoint(directory)):
            raise FileNotFoundError(f"{directory}: neither an HF model directory (no config.json) "
                                    "nor a rotax training checkpoint (no rotax_manifest.json)")
    if not (is_hf_dir(base_dir) or is_hf_dir(tuned_dir)):
        raise ValueError("at least one of --base / --tuned must be an HF directory (the other may "
                         "be a rotax checkpoint of the same model)")
    out = Path(out_dir).resolve()
    if out in (Path(base_dir).resolve(), Path(tuned_dir).resolve()):
        raise ValueError("--out must differ from --base and --tuned")
    cfg_base, cfg = (ModelConfig.from_hf_dir(d if is_hf_dir(d) else other)
                     for d, other in ((base_dir, tuned_dir), (tuned_dir, base_dir)))
    if cfg_base.architecture != cfg.architecture:
        raise ValueError(f"architectures differ: base {cfg_base.architecture!r} vs tuned "
                         f"{cfg.architecture!r}")
    try:
        check_compatible(param_shapes(cfg), param_shapes(cfg_base))
    except ValueError as err:
        raise ValueError(f"base and tuned models do not match: {err}".replace(
            "target", "tuned").replace("reference", "base")) from None
    if tuple(cfg_base.layer_ids) != tuple(cfg.layer_ids):
        raise ValueError(f"layer numbering differs: base {cfg_base.layer_ids} vs tuned {cfg.layer_ids}")
    tokenizer = _tokenizer(tuned_dir, base_dir)
    toy = is_toy_tokenizer(tokenizer)
    probe = load_probe(settings.probe, score=settings.score, seed=settings.seed,
                       hands=settings.hands, toy_deck=toy)
    id_probe = None if not settings.id_probe else load_probe(
        settings.id_probe, score=settings.score, seed=settings.seed + 1, hands=settings.hands,
        toy_deck=toy)
    options = {"attempts": settings.attempts, "max_new_tokens": settings.max_new_tokens}
    scorers = make_scorers(probe, cfg, tokenizer, mesh=mesh, batch_size=settings.batch_size,
                           points_options=options)
    id_scorers = None if id_probe is None else make_scorers(
        id_probe, cfg, tokenizer, mesh=mesh, batch_size=settings.batch_size, points_options=options)
    return Inputs(cfg, tokenizer, probe, id_probe, scorers, id_scorers, operators)


def is_hf_dir(directory) -> bool:
    return (Path(directory) / "config.json").is_file()


def is_rotax_checkpoint(directory) -> bool:
    return (Path(directory) / "rotax_manifest.json").is_file()


def load_pair(base_dir, tuned_dir, *, mesh=None, dtype=None):
    """``(cfg, base, tuned)``: HF directories load with ``load_hf_checkpoint``; one of the two
    may be a rotax training checkpoint (one step's directory, e.g.
    ``RUN/sft/checkpoints/sft/500``), restored in the shardings of the other's config."""
    hf_first = tuned_dir if is_hf_dir(tuned_dir) else base_dir
    other_dir = base_dir if hf_first == tuned_dir else tuned_dir
    cfg, first = load_hf_checkpoint(hf_first, mesh=mesh, dtype=dtype)
    if is_hf_dir(other_dir):
        _, other = load_hf_checkpoint(other_dir, mesh=mesh, dtype=dtype)
    else:
        mesh = mesh or make_mesh(devices=jax.devices()[:1])
        other = restore_model_params(other_dir, sharded_param_shapes(cfg, mesh))
    return (cfg, other, first) if hf_first == tuned_dir else (cfg, first, other)


def _tokenizer(*directories):
    for directory in directories:
        try:
            return load_tokenizer(directory)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"no tokenizer in {directories[0]} nor {directories[-1]}")


def gate(cfg, base, tuned, scorers, *, binary: bool, settings: GateSettings, id_scorers=None,
         id_binary: bool = True, operators=None, began: float | None = None,
         nll: tuple[bool, bool] = (False, False)) -> dict:
    """The gate on loaded trees. ``scorers``/``id_scorers``: ``(selection, report)`` callables
    ``params -> [n]`` item scores (higher is better); ``nll``: whether the probe / ID probe
    scores are minus NLL (their means are then reported as NLL, lower better). Returns the
    result dict of ``gate.json`` (without the file-level fields) plus ``"repaired"``: the
    chosen candidate's tree (the tuned tree when nothing was scored), ``"chosen_candidate"``
    (a :class:`~rotax.gate.search.Candidate` or None) and ``"diagnosis_object"``."""
    began = time.perf_counter() if began is None else began
    found = search_repairs(cfg, base, tuned, scorers[0], settings=settings,
                           id_select=None if id_scorers is None else id_scorers[0],
                           operators=operators, began=began)
    chosen = found.pop("chosen_candidate")
    repaired = chosen.apply(tuned, base, cfg) if chosen is not None else tuned
    result = {**decide_on_report(base, tuned, repaired, scorers[1], binary=binary, settings=settings,
                                 id_report=None if id_scorers is None else id_scorers[1],
                                 id_binary=id_binary, nll=nll),
              "chosen": None if chosen is None else chosen.to_json(), **found}
    result["search_seconds"] = sum(r["seconds"] or 0.0 for r in result["candidates"])
    result["seconds"] = time.perf_counter() - began
    result["repaired"], result["chosen_candidate"] = repaired, chosen
    return result


def search_repairs(cfg, base, tuned, select, *, settings: GateSettings, id_select=None,
                   operators=None, began: float | None = None) -> dict:
    """Selection-half scores of base and tuned, the diagnosis, and the candidate search under
    what is left of ``settings.budget_s``. Returns ``{"chosen_candidate", "chosen_selection",
    "selection", "diagnosis", "diagnosis_object", "candidates", "scoring_seconds"}``."""
    began = time.perf_counter() if began is None else began
    operators = parse_operators(operators if operators is not None else settings.operators)
    start = time.perf_counter()
    base_sel, tuned_sel = select(base), select(tuned)
    id_tuned_sel = None if id_select is None else id_select(tuned)
    scoring_seconds = time.perf_counter() - start
    diagnosis = diagnose(base, tuned, cfg, k=settings.k, null_seeds=settings.null_seeds,
                         threshold=settings.threshold, progress=False)
    items = candidates(cfg, diagnosis, operators, fixed_layers=settings.fixed_layers,
                       ranks=settings.ranks)
    left = settings.budget_s - (time.perf_counter() - began)
    rows = run_search(items, tuned, base, cfg, select, base_scores=base_sel, tuned_scores=tuned_sel,
                      id_score=id_select, id_tuned=id_tuned_sel, budget_s=left,
                      progress=settings.progress)
    lost_sel = float(np.mean(base_sel) - np.mean(tuned_sel))
    cap = float(np.mean(base_sel)) if lost_sel > 0 else np.inf
    best = choose(rows, settings.max_id_cost, settings.tie_share * abs(lost_sel), cap)
    return {"chosen_candidate": None if best is None else items[best],
            "chosen_selection": None if best is None else rows[best],
            "selection": {"base": float(np.mean(base_sel)), "tuned": float(np.mean(tuned_sel))},
            "diagnosis": diagnosis.to_json(), "diagnosis_object": diagnosis, "candidates": rows,
            "scoring_seconds": scoring_seconds}


def decide_on_report(base, tuned, repaired, report, *, binary: bool, settings: GateSettings,
                     id_report=None, id_binary: bool = True, nll: tuple[bool, bool] = (False, False),
                     base_scores=None, id_base_scores=None) -> dict:
    """Scores base / tuned / repaired on the report half (``base_scores`` / ``id_base_scores``:
    already computed ones, reused) and returns :func:`rotax.gate.decision.decide`'s dict plus
    ``probe`` / ``id_probe`` score blocks and ``report_seconds``."""
    start = time.perf_counter()
    base_rep = report(base) if base_scores is None else base_scores
    tuned_rep, repaired_rep = report(tuned), report(repaired)
    id_rep = None
    if id_report is not None:
        id_rep = {"base": id_report(base) if id_base_scores is None else id_base_scores,
                  "tuned": id_report(tuned), "repaired": id_report(repaired)}
    verdict = decision_lib.decide(
        base_rep, tuned_rep, repaired_rep, binary=binary,
        id_tuned=None if id_rep is None else id_rep["tuned"],
        id_repaired=None if id_rep is None else id_rep["repaired"], id_binary=id_binary,
        target=settings.target, max_id_cost=settings.max_id_cost, draws=settings.draws,
        seed=settings.seed)
    return {**verdict,
            "probe": _scores(base_rep, tuned_rep, repaired_rep, binary, settings, nll[0]),
            "id_probe": None if id_rep is None else _scores(
                id_rep["base"], id_rep["tuned"], id_rep["repaired"], id_binary, settings, nll[1]),
            "report_seconds": time.perf_counter() - start,
            "base_scores": base_rep, "id_base_scores": None if id_rep is None else id_rep["base"]}


def _scores(base, tuned, repaired, binary: bool, settings: GateSettings, nll: bool) -> dict:
    """Mean and 95% interval per model; for NLL probes in NLL units (nats/token)."""
    out = {"unit": "nll" if nll else "score"}
    for name, v in (("base", base), ("tuned", tuned), ("repaired", repaired)):
        low, high = decision_lib.mean_interval(v, binary, draws=settings.draws, seed=settings.seed)
        mean = float(np.mean(v))
        out[name] = ({"mean": -mean, "interval": [-high, -low], "n": int(np.size(v))} if nll else
                     {"mean": mean, "interval": [low, high], "n": int(np.size(v))})
    return out


def run_gate(base_dir, tuned_dir, out_dir, settings: GateSettings, mesh=None) -> dict:
    """``rotax gate``: writes ``gate.json``, ``gate.md``, ``gate.html``, the diagnosis heatmaps
    and ``model/`` (the repaired HF directory) under ``out_dir``. Returns the gate.json dict."""
    began = time.perf_counter()
    inputs = check_inputs(base_dir, tuned_dir, out_dir, settings, mesh)
    hf_dir = tuned_dir if is_hf_dir(tuned_dir) else base_dir
    cfg, base, tuned = load_pair(base_dir, tuned_dir, mesh=mesh, dtype=settings.dtype)
    result = gate(cfg, base, tuned, inputs.scorers, binary=inputs.scorers[0].binary,
                  settings=settings, id_scorers=inputs.id_scorers,
                  id_binary=True if inputs.id_scorers is None else inputs.id_scorers[0].binary,
                  operators=inputs.operators, began=began,
                  nll=(inputs.probe.score == "nll",
                       inputs.id_probe is not None and inputs.id_probe.score == "nll"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repaired, diagnosis = result.pop("repaired"), result.pop("diagnosis_object")
    for key in ("chosen_candidate", "base_scores", "id_base_scores"):
        result.pop(key)
    export = export_hf_checkpoint(cfg, repaired, out / "model", source=hf_dir)
    result.update(base=str(base_dir), tuned=str(tuned_dir), probe_name=inputs.probe.name,
                  score=inputs.probe.score, id_probe_name=inputs.id_probe.name if inputs.id_probe else None,
                  model_dir="model", exported_tensors=export.written,
                  settings=dataclasses.asdict(settings))
    result["seconds"] = time.perf_counter() - began
    report_lib.write(out, result, diagnosis)
    return result
