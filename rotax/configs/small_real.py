"""The study's recipe on a small real model on one accelerator (or a Colab runtime):
Llama-3.2-1B(-Instruct) or Qwen2.5-0.5B/1.5B(-Instruct) from a local HF directory.

    rotax study --config configs/small_real.py --config.model.path="$MODEL_DIR/Qwen2.5-0.5B-Instruct"

Differences from the 7-11B configs, all for memory or speed on one device: the 64 sequences of
an SFT step run as 8 micro-batches of 8, PPO updates on micro-batches of 2 rows and samples 16
episodes at a time, fewer steps, and a 10x larger SFT learning rate (1e-5; the study's 1e-6 was
chosen for 7-11B models). Memory: docs/scaling.md ("Small models on one accelerator").
"""

from rotax.configs.study_settings import checkpoint_schedule, study_config

STUDY_SFT_CHECKPOINTS = checkpoint_schedule(tuple(range(0, 201, 50)), 100, 800)


def get_config():
    config = study_config(run_dir="runs/small_real", sft_steps=800, ppo_updates=100,
                          episodes_per_update=32, ppo_minibatch=128, ppo_every=20,
                          rollout_batch_size=16)
    config.sft.grad_accum_steps = 8
    config.sft.checkpoint_steps = STUDY_SFT_CHECKPOINTS
    config.sft.learning_rate = 1e-5
    config.sft.eval_batch_size = 32
    config.ppo.microbatch_size = 2
    config.ppo.eval_batch_size = 32
    config.study.eval_batch_size = 32
    return config
