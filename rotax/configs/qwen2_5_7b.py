"""The study on Qwen2.5-7B-Instruct (SPEC §2–4).

    rotax study --config configs/qwen2_5_7b.py \\
        --config.model.path="$MODEL_DIR/Qwen2.5-7B-Instruct" \\
        --config.run_dir="$RUNS_DIR/qwen-study" --config.mesh.shape=1,16,1

``model.path`` is a local HF directory (rotax never downloads); 7.62B parameters, untied LM
head, q/k/v biases. Mesh shapes and memory per device: docs/scaling.md; every value against the
paper: docs/reproducing-the-study.md.
"""

from rotax.configs.study_settings import checkpoint_schedule, study_config

#: SFT checkpoints evaluated (the SPEC gives only peak 120 and end 800 for Qwen; this
#: schedule is rotax's: every 20 steps to 200, then every 100, so that 120 is on it).
STUDY_SFT_CHECKPOINTS = checkpoint_schedule(tuple(range(0, 201, 20)), 100, 800)
STUDY_PEAK_STEP, STUDY_END_STEP = 120, 800


def get_config():
    # PPO: the reference collects 32 turns per process on 4 processes per update.
    config = study_config(run_dir="runs/qwen2_5_7b", sft_steps=800, ppo_updates=300,
                        episodes_per_update=32, ppo_minibatch=4 * 32, ppo_every=50,
                        recipe="reference", model="qwen2_5_7b")
    config.sft.checkpoint_steps = STUDY_SFT_CHECKPOINTS  # saved and evaluated
    return config
