"""The controls the papers lack, each from the same SFT checkpoint as a PPO run and evaluated on
the same test hands:

* ``continued_sft``: plain SFT continued on *fresh* ID hands at PPO's learning rate, for as
  many hands as PPO plays (``ppo.num_updates × ppo.episodes_per_update``, in batches of
  ``sft.batch_size``) — does any gentle further ID training restore as much?
* ``ppo_kl_base``: PPO with a per-token KL penalty (``study.control_kl``) to the *base* model
  (the "light-touch alignment" of the playbook) instead of none;
* ``ppo_shuffled``: PPO with the rewards shuffled among the update's episodes — gains that
  survive it do not come from the reward.
"""

from __future__ import annotations

import copy

from rotax.rl.shuffled import ShuffledRewards
from rotax.sft.loop import train as train_sft
from rotax.tasks.points import toy

CONTROLS = ("continued_sft", "ppo_kl_base", "ppo_shuffled")
NAMES = {"continued_sft": "continued SFT on fresh ID hands", "ppo_kl_base": "PPO + KL to the base",
         "ppo_shuffled": "PPO, shuffled rewards"}


def continued_sft(ctx, step: int, sft_seed: int) -> tuple[dict, str]:
    """``(test accuracy, detail)`` of SFT continued from checkpoint ``step`` of SFT seed
    ``sft_seed``."""
    config = copy.deepcopy(ctx.config)
    p, sft = config.ppo, config.sft
    hands = p.num_updates * p.episodes_per_update
    steps = max(1, round(hands / sft.batch_size))
    sft.update(dict(num_steps=steps, learning_rate=p.learning_rate, end_learning_rate=p.end_learning_rate,
                    schedule=p.schedule, warmup_steps=0, checkpoint_every=steps, eval_every=0,
                    checkpoint_steps=(), checkpoint_initial=False))
    config.seed = ctx.config.seed + 7919 + sft_seed  # a data order of its own
    source = toy.pretraining_source(ctx.tokenizer, ctx.renderer, batch_size=sft.batch_size,
                                    bucket=config.data.bucket, max_length=config.data.max_length,
                                    id_share=1.0, solution_choice=config.data.solution_choice,
                                    stream="continued_sft")
    run_dir = ctx.run_dir / "controls" / f"sft_seed{sft_seed}" / f"continued_sft_from{step}"
    result = train_sft(config, ctx.model_cfg, lambda: ctx.sft_params(step, sft_seed), source, mesh=ctx.mesh,
                       resume=True, run_dir=run_dir, run_metadata=ctx.checkpoint_metadata(sft_step=step))
    params = result.state.params
    return ctx.evaluate_test(params), (f"{steps} steps × {sft.batch_size} fresh ID hands at lr "
                                       f"{p.learning_rate:g} ({p.schedule}) from SFT step {step}")


def ppo_config(ctx, control: str):
    """The config and the environment wrapper of a PPO control."""
    config = copy.deepcopy(ctx.config)
    if control == "ppo_kl_base":
        config.ppo.kl_coef = float(ctx.config.study.control_kl)
        return config, None, ctx.base_params
    if control == "ppo_shuffled":
        return config, lambda env, seed: ShuffledRewards(env, seed), None
    raise ValueError(f"study.controls: unknown PPO control {control!r}; choose from {CONTROLS}")
