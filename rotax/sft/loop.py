"""The SFT loop: batches from a source, the jitted step, checkpoints, evaluation, logging.

``train(config, model_cfg, params, source, ...)`` runs ``config.<section>.num_steps`` optimizer
steps (``section`` is ``sft`` by default; the toy study pre-trains its base with the same loop
and its own ``pretrain`` section). Batch ``i`` is ``source(config.seed, i)``, so resuming from the checkpoint of step ``n``
replays exactly batches ``n, n+1, ...``. A non-finite loss or gradient norm stops the run with
:class:`NonFiniteLossError` naming the step; nothing after the last good checkpoint is saved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax

from rotax.io.checkpoint import CheckpointStore, update_run_metadata
from rotax.runtime.host import check_same_on_every_process, to_global, to_host
from rotax.runtime.metrics import RunLogger, tokens_per_second
from rotax.models.decoder import param_shapes
from rotax.runtime.run_config import config_to_dict, mesh_from_config, write_resolved_config
from rotax.runtime.sharding import canonical_mesh
from rotax.sft.step import make_eval_loss, make_train_step, prepare_batch, train_batch_shardings
from rotax.sft.data import Batch
from rotax.training.train_state import (NonFiniteLossError, abstract_train_state,
                                        init_train_state, make_optimizer)

log = logging.getLogger(__name__)
STAGE = "sft"



@dataclasses.dataclass
class SFTResult:
    state: Any            # the final TrainState
    step: int             # optimizer steps done
    metrics: dict         # the last step's metrics
    max_ood: dict | None  # {"step", "metric", "value", "checkpoint"} of the best evaluation
    checkpoints: list     # checkpoint steps on disk



def evaluate_probes(eval_loss, params, probe_sets: Mapping[str, Sequence[Batch]]) -> dict:
    """``{"<name>_loss": mean answer-token nll}`` over each probe set's batches."""
    out = {}
    for name, batches in probe_sets.items():
        total = count = 0.0
        for batch in batches:
            s, n = to_host(eval_loss(params, batch))
            total, count = total + float(s), count + float(n)
        out[f"{name}_loss"] = total / max(count, 1.0)
    return out


def train(config, model_cfg, params, source: Callable[[int, int], Batch], *, mesh=None,
          resume: bool = False, eval_hook: Callable | None = None,
          probe_sets: Mapping[str, Sequence[Batch]] | None = None,
          run_metadata: Mapping[str, Any] | None = None,
          compiler_options: dict | None = None, section: str = "sft",
          run_dir=None) -> SFTResult:
    """Runs SFT under ``config`` (section ``section``, plus ``seed``, ``run_dir``, ``mesh``);
    ``run_dir`` overrides ``config.run_dir`` (the study gives each stage its own directory).

    params: the starting canonical tree, or a zero-argument callable returning it (called
    only when not resuming). eval_hook(params, step) -> {metric: value} is called every
    ``sft.eval_every`` steps (and at step 0); probe_sets ``{"id": [Batch], "ood": [...]}``
    get their loss every ``sft.probe_every`` steps. run_metadata (e.g. the source HF
    directory and its config) goes into every checkpoint and ``run_metadata.json``.
    compiler_options: XLA options for the step and probe-loss jits.
    With ``resume`` the newest good checkpoint is restored (damaged ones are skipped).
    """
    sft = config[section]
    run_dir = str(run_dir or config.run_dir)
    mesh = canonical_mesh(mesh or mesh_from_config(config))
    if sft.batch_size % sft.grad_accum_steps:
        raise ValueError(f"{section}.batch_size={sft.batch_size} does not divide into "
                         f"{section}.grad_accum_steps={sft.grad_accum_steps} micro-batches")
    # the study's uneven checkpoint lists (0, 90, 140, 200, 300, ...): saved and evaluated
    explicit_steps = frozenset(int(x) for x in sft.get("checkpoint_steps", ()))
    outside = sorted(s for s in explicit_steps if not 0 <= s <= sft.num_steps)
    if outside:  # would silently never be saved
        raise ValueError(f"{section}.checkpoint_steps {outside} lie outside "
                         f"0..{section}.num_steps={sft.num_steps}")
    rows = sft.batch_size // sft.grad_accum_steps
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % split:
        raise ValueError(f"micro-batch of {rows} rows does not split over data×fsdp={split} devices")
    optimizer, schedule = make_optimizer(sft, sft.num_steps)
    abstract = abstract_train_state(param_shapes(model_cfg), optimizer, mesh)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    run_metadata = dict(run_metadata or {})
    config_dict = config_to_dict(config)
    write_resolved_config(config, run_dir)
    store = CheckpointStore(run_dir, STAGE, keep=sft.keep_checkpoints or None,
                            async_save=sft.async_checkpointing)
    start, state, metadata = store.resume(abstract, resume=resume)
    best = metadata.get("sft_max_ood")
    fresh = state is None
    if state is None:
        state = init_train_state(params() if callable(params) else params, optimizer, config.seed, shardings)
    update_run_metadata(run_dir, **run_metadata, sft_max_ood=best)

    step_fn = make_train_step(model_cfg, optimizer, schedule, mesh, shardings,
                              compiler_options=compiler_options)
    eval_loss = make_eval_loss(model_cfg, mesh, shardings.params, compiler_options) \
        if probe_sets else None
    batch_shardings = train_batch_shardings(mesh)
    check_same_on_every_process(probe_sets or {}, "the probe batches")
    probe_sets = {name: [to_global(prepare_batch(b), batch_shardings) for b in batches]
                  for name, batches in (probe_sets or {}).items()}
    logger = RunLogger(run_dir, STAGE, start_step=start, total_steps=sft.num_steps,
                       progress=sft.progress)

    def observe(step: int) -> dict:
        """Evaluation hook and probe losses due at ``step``; updates ``best``."""
        nonlocal best
        out = {}
        if probe_sets and sft.probe_every and step % sft.probe_every == 0:
            out.update(evaluate_probes(eval_loss, state.params, probe_sets))
            logger.log(step, out, group="probe")
        if eval_hook is not None and (_every(step, sft.eval_every) or step in explicit_steps):
            results = {k: float(v) for k, v in eval_hook(state.params, step).items()}
            logger.log(step, results, group="eval")
            out.update(results)
            value = results.get(sft.select_metric)
            if value is not None and (best is None or value > best["value"]):
                best = {"step": step, "metric": sft.select_metric, "value": value, "checkpoint": None}
        return out

    def save(step: int, metrics: dict) -> None:
        nonlocal best
        if best is not None and best["step"] == step:
            best = dict(best, checkpoint=str(store.path(step)))
        store.save(step, state, {**run_metadata, "config": config_dict, "metrics": metrics,
                                 "data_position": {"seed": int(config.seed), "next_batch": step},
                                 "sft_max_ood": best})
        update_run_metadata(run_dir, sft_max_ood=best,
                            sft_last_checkpoint=str(store.path(step)))

    metrics: dict = {}
    try:
        if fresh:  # not when resumed from the initial checkpoint: it exists
            observed = observe(0)
            if sft.checkpoint_initial or 0 in explicit_steps:
                save(0, observed)
        for index in range(start, sft.num_steps):
            began = time.perf_counter()
            step = index + 1
            due = step == sft.num_steps or _every(step, sft.checkpoint_every) or step in explicit_steps
            batch = prepare_batch(source(config.seed, index), sft.grad_accum_steps)
            if index == start or due:  # cheap, but a collective: not every step
                check_same_on_every_process(batch, f"SFT batch {index} (seed {config.seed})")
            batch = to_global(batch, batch_shardings)  # each process places its own rows
            state, device_metrics = step_fn(state, batch)
            metrics = {k: float(v) for k, v in to_host(device_metrics).items()}
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                store.wait()
                last = store.steps()[-1] if store.steps() else None
                raise NonFiniteLossError(
                    f"non-finite loss {metrics['loss']} (grad norm {metrics['grad_norm']}) at step "
                    f"{step} (batch {index}); stopped; last good checkpoint: "
                    f"{store.path(last) if last is not None else 'none'}")
            seconds = time.perf_counter() - began
            metrics.update(step_seconds=seconds, tokens_per_second=tokens_per_second(metrics["tokens"], seconds))
            logger.log(step, metrics)
            logger.progress(step, loss=metrics["loss"], tok_s=round(metrics["tokens_per_second"]))
            observed = observe(step)
            if due:
                save(step, {**metrics, **observed})
    finally:
        store.close()
        logger.close()
    return SFTResult(state, sft.num_steps, metrics, best, store.steps())


def _every(step: int, every: int) -> bool:
    return bool(every) and step % every == 0

