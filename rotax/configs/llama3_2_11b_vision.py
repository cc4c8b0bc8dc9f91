"""The study on Llama-3.2-11B-Vision-Instruct, text only (SPEC §2–4).

    rotax study --config configs/llama3_2_11b_vision.py \\
        --config.model.path="$MODEL_DIR/Llama-3.2-11B-Vision-Instruct" \\
        --config.run_dir="$RUNS_DIR/llama-study" --config.mesh.shape=1,16,1

``model.path`` is a local HF directory (rotax never downloads). rotax loads the 32
self-attention layers of the text tower (8.03B parameters); the cross-attention layers and the
vision tower stay on disk and are copied into exports. Mesh shapes and memory per device:
docs/scaling.md; every value against the paper: docs/reproducing-the-study.md.
"""

from rotax.configs.study_settings import checkpoint_schedule, study_config

#: SFT checkpoints the study evaluates (SPEC §2): 0, 90, 140, 200, then every 100 to 1600.
STUDY_SFT_CHECKPOINTS = checkpoint_schedule((0, 90, 140, 200), 100, 1600)
#: The study's peak-OOD and end SFT checkpoints; PPO starts from checkpoints in about 420-1200.
STUDY_PEAK_STEP, STUDY_END_STEP = 140, 1100


def get_config():
    # PPO: the reference collects 128 turns per process on 4 processes per update.
    config = study_config(run_dir="runs/llama3_2_11b_vision", sft_steps=1600, ppo_updates=100,
                        episodes_per_update=128, ppo_minibatch=4 * 128, ppo_every=10,
                        ppo_starts=("peak", STUDY_END_STEP), recipe="reference",
                        model="llama3_2_11b_vision")
    config.sft.checkpoint_steps = STUDY_SFT_CHECKPOINTS  # saved and evaluated
    return config
