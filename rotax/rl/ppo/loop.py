"""The PPO loop: rollout → score → update, with checkpoints, evaluation and logging.

``train(config, model_cfg, init_policy, env, ...)`` runs ``config.ppo.num_updates`` updates.
Update ``u`` (0-based) plays ``env.play(cfg, policy, key_u, u)`` with
``key_u = fold_in(fold_in(PRNGKey(seed), ROLLOUT_STREAM), u)`` and the current weights (the
same arrays the learner updates — no copy), scores the buffer, and runs the jitted update,
whose shuffling key comes from the train state's RNG. Everything a resumed run needs is in
the checkpoint of update ``u`` (params incl. value head, Adam moments, update count, RNG), so
a run killed at any point and resumed from its last checkpoint continues bit-identically.

A non-finite loss or gradient norm stops the run with :class:`NonFiniteLossError` naming the
update; nothing after the last good checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rotax.rl import ppo as ppo_lib
from rotax.io.checkpoint import CheckpointStore, update_run_metadata
from rotax.runtime.host import check_same_on_every_process, to_global, to_host
from rotax.runtime.metrics import RunLogger, tokens_per_second
from rotax.rl.rollout import Environment, Rollout, build_buffer, buffer_rows
from rotax.runtime.run_config import config_to_dict, mesh_from_config, write_resolved_config
from rotax.runtime.sharding import canonical_mesh
from rotax.training.train_state import NonFiniteLossError, init_train_state

log = logging.getLogger(__name__)
ROLLOUT_STREAM = 0x5EED
VALUE_HEAD_STREAM = 0x7A1E



@dataclasses.dataclass
class PPOResult:
    state: Any            # the final TrainState (params = {"policy", "value_head"})
    updates: int          # PPO updates done
    metrics: dict         # the last update's metrics
    checkpoints: list     # checkpoint steps (= updates done) on disk



def rollout_metrics(rollout: Rollout) -> dict:
    """Per-update rollout statistics: reward_mean (per turn), episode_return_mean,
    success_rate (episodes solved), first_attempt_success, turns, turns_per_episode,
    truncated_share, response_tokens_mean."""
    turns = rollout.turns
    rewards = np.array([t.reward for t in turns], np.float64)
    first = [t for t in turns if t.attempt == 0]
    return {
        "reward_mean": float(rewards.mean()) if len(rewards) else math.nan,
        "episode_return_mean": float(rewards.sum() / max(rollout.episodes, 1)),
        "success_rate": float(np.mean(rollout.solved)) if rollout.episodes else math.nan,
        "first_attempt_success": float(np.mean([t.solved for t in first])) if first else math.nan,
        "turns": float(len(turns)),
        "turns_per_episode": len(turns) / max(rollout.episodes, 1),
        "truncated_share": float(np.mean([t.truncated for t in turns])) if turns else math.nan,
        "response_tokens_mean": rollout.generated_tokens / max(len(turns), 1),
    }


class HistogramWriter:
    """TensorBoard histograms of one stage (``<run_dir>/tensorboard/<stage>``, beside the
    scalars :class:`rotax.runtime.metrics.RunLogger` writes there); process 0 only."""

    def __init__(self, run_dir, stage: str, start_step: int, enabled: bool = True):
        self._writer = None
        if enabled and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard" / stage),
                                         filename_suffix=".histograms",
                                         purge_step=start_step + 1 if start_step else None)

    def add(self, name: str, values: np.ndarray, step: int) -> None:
        if self._writer is not None and len(values):
            self._writer.add_histogram(name, np.asarray(values, np.float64), int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def train(config, model_cfg, init_policy, env: Environment, *, mesh=None, resume: bool = False,
          pad_id: int = 0, eval_hook: Callable | None = None,
          run_metadata: Mapping[str, Any] | None = None,
          reference_policy: Callable | None = None) -> PPOResult:
    """Runs PPO under ``config`` (sections ``ppo``, plus ``seed``, ``run_dir``, ``mesh``).

    init_policy: the starting canonical tree, or a zero-argument callable returning it
    (called only when a fresh state is needed or the KL reference is). env: plays the
    episodes (:class:`rotax.tasks.points.environment.GeneralPointsEnvironment` for GeneralPoints;
    it also sets the per-token weights). eval_hook(policy_params, update) ->
    {metric: value} runs every ``ppo.eval_every`` updates (and at 0). reference_policy: a
    callable returning the frozen KL reference (default: ``init_policy``); used only when
    ``ppo.kl_coef != 0``. With ``resume`` the newest good checkpoint of stage ``ppo.stage``
    is restored.
    """
    cfg_ppo = config.ppo
    mesh = canonical_mesh(mesh or mesh_from_config(config))
    settings = ppo_lib.UpdateSettings.from_config(cfg_ppo)
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if settings.microbatch_size % split:
        raise ValueError(f"ppo.microbatch_size={settings.microbatch_size} does not split over "
                         f"data×fsdp={split} devices")
    opt = ppo_lib.OptimizerSettings.from_config(cfg_ppo)
    optimizer = ppo_lib.make_optimizer(opt)
    abstract = ppo_lib.abstract_state(model_cfg, opt, mesh)
    shardings = ppo_lib.state_shardings(model_cfg, opt, mesh)
    stage = cfg_ppo.stage
    run_metadata = dict(run_metadata or {})
    config_dict = config_to_dict(config)
    write_resolved_config(config, config.run_dir, name=f"config_{stage}")
    store = CheckpointStore(config.run_dir, stage, keep=cfg_ppo.keep_checkpoints or None,
                            async_save=cfg_ppo.async_checkpointing)
    start, state, _ = store.resume(abstract, resume=resume, unit="update",
                                   other_run="choose another run_dir or ppo.stage")
    load_policy = init_policy if callable(init_policy) else (lambda: init_policy)
    fresh = state is None
    if state is None:
        head_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), VALUE_HEAD_STREAM)
        params = ppo_lib.init_ppo_params(model_cfg, load_policy(), head_key)
        state = init_train_state(params, optimizer, config.seed, shardings)
    reference = None
    if settings.loss.kl_coef:
        reference = jax.device_put((reference_policy or load_policy)(), shardings.params["policy"])
    update_run_metadata(config.run_dir, **{f"{stage}_init": run_metadata.get("init")})

    score_fn = ppo_lib.make_score_fn(model_cfg, settings, opt, mesh, reference is not None)
    update_fn = ppo_lib.make_update_fn(model_cfg, settings, opt, mesh)
    placement = ppo_lib.buffer_shardings(mesh)
    turns_per_episode = getattr(env, "max_turns", None) or cfg_ppo.attempts
    rows = buffer_rows(cfg_ppo.episodes_per_update, turns_per_episode, settings.microbatch_size)
    root = jax.random.fold_in(jax.random.PRNGKey(config.seed), ROLLOUT_STREAM)
    logger = RunLogger(config.run_dir, stage, start_step=start, total_steps=cfg_ppo.num_updates,
                       progress=cfg_ppo.progress)
    histograms = HistogramWriter(config.run_dir, stage, start)

    def observe(update: int) -> dict:
        if eval_hook is None or not cfg_ppo.eval_every or update % cfg_ppo.eval_every:
            return {}
        results = {k: float(v) for k, v in eval_hook(state.params["policy"], update).items()}
        logger.log(update, results, group="eval")
        return results

    def save(update: int, metrics: dict) -> None:
        store.save(update, state, {**run_metadata, "config": config_dict, "metrics": metrics,
                                   "data_position": {"seed": int(config.seed), "next_update": update}})
        update_run_metadata(config.run_dir, **{f"{stage}_last_checkpoint": str(store.path(update))})

    metrics: dict = {}
    try:
        if fresh:  # not when resumed from the initial checkpoint: it exists
            observed = observe(0)
            if cfg_ppo.checkpoint_initial:
                save(0, observed)
        for update in range(start, cfg_ppo.num_updates):
            began = time.perf_counter()
            rollout = env.play(model_cfg, state.params["policy"], jax.random.fold_in(root, update), update)
            buffer = build_buffer(rollout.turns, rows=rows, pad_id=pad_id,
                                  max_new_tokens=cfg_ppo.max_new_tokens)
            # every process scored the gathered rollout itself (rewards, revisions): a process with
            # another environment or tokenizer must stop the run, not mix its rows in
            check_same_on_every_process(buffer, f"PPO buffer of update {update} (seed {config.seed})")
            buffer = to_global(buffer, placement)  # each process places its own rows
            scored = time.perf_counter()
            scores = jax.block_until_ready(score_fn(state.params, reference, buffer))
            updating = time.perf_counter()
            state, device_metrics, raw = update_fn(state, buffer, scores, jnp.int32(update))
            device_metrics, raw = to_host((device_metrics, raw))
            finished = time.perf_counter()
            metrics = {k: float(v) for k, v in device_metrics.items()}
            done = update + 1
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                last = store.steps()[-1] if store.steps() else None
                raise NonFiniteLossError(
                    f"non-finite PPO loss {metrics['loss']} (grad norm {metrics['grad_norm']}) at "
                    f"update {done} of {cfg_ppo.num_updates}; stopped; last good checkpoint: "
                    f"{store.path(last) if last is not None else 'none'}")
            metrics.update(rollout_metrics(rollout))
            metrics.update(_sampler_gap(buffer, scores))
            metrics.update(rollout_seconds=scored - began, sample_seconds=rollout.sample_seconds,
                           scoring_seconds=updating - scored, update_seconds=finished - updating,
                           rollout_tokens_per_second=tokens_per_second(
                               rollout.generated_tokens, rollout.sample_seconds))
            logger.log(done, metrics)
            histograms.add("train/advantages", np.asarray(raw)[: int(metrics["turns"])], done)
            logger.progress(done, reward=metrics["reward_mean"], success=metrics["success_rate"],
                            kl=metrics["approx_kl"])
            observed = observe(done)
            if done == cfg_ppo.num_updates or (cfg_ppo.checkpoint_every and done % cfg_ppo.checkpoint_every == 0):
                save(done, {**metrics, **observed})
    finally:
        store.close()
        logger.close()
        histograms.close()
    return PPOResult(state, cfg_ppo.num_updates, metrics, store.steps())


def _sampler_gap(buffer, scores) -> dict:
    """Mean |sampler log-prob − recomputed log-prob| per response token (a sampler check)."""
    mask, sampler, scored = to_host((buffer.response_mask, buffer.sampler_logprob, scores.token_logprob))
    gap = np.abs(sampler - scored)
    return {"sampler_logprob_gap": float((gap * mask).sum() / max(mask.sum(), 1.0))}
