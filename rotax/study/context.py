"""What the stages of `rotax study` share: config, run directory, mesh, tokenizer, renderer,
the loaders of every model the study makes, and its evaluation on seeded hand sets."""

from __future__ import annotations

import copy
import functools
from pathlib import Path


from rotax.io import base_model
from rotax.io.checkpoint import CheckpointStore, latest_checkpoint, restore_params
from rotax.io.tokenizer import load_tokenizer
from rotax.models.decoder import sharded_param_shapes
from rotax.runtime.run_config import mesh_from_config
from rotax.sampling import SamplingOptions
from rotax.tasks.points import STANDARD_RANKS, Rule
from rotax.tasks.points.accuracy import evaluate_accuracy, study_hands
from rotax.tasks.points.sft_source import make_renderer
from rotax.tasks.points.toy import TOY_RANKS


#: Hand-set seeds: curves use 1000 + seed, the final test sets 1000 + 100 + seed (disjoint).
TEST_SEED_OFFSET = 100


class StudyContext:
    """Config, run directory, mesh, tokenizer and renderer shared by the stages."""

    def __init__(self, config, run_dir: Path, base_dir: Path | None = None):
        self.config, self.run_dir = config, Path(run_dir)
        # the study's base model (a pair opened from two HF directories: the target)
        self.base_dir = Path(base_dir) if base_dir is not None else self.run_dir / "base"
        self.mesh = mesh_from_config(config)
        self.ranks = TOY_RANKS if config.study.deck == "toy" else STANDARD_RANKS
        self._tokenizer = None

    @property
    def tokenizer(self):  # not cached: the base stage writes the directory first
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.base_dir)
        return self._tokenizer

    @functools.cached_property
    def renderer(self):
        return make_renderer(self.config.data)

    @functools.cached_property
    def model_cfg(self):
        return base_model.model_config(self.config.model, self.base_dir)

    def abstract_params(self):
        return sharded_param_shapes(self.model_cfg, self.mesh)

    def base_params(self):
        cfg, params, _ = base_model.load_base(with_path(self.config.model, self.base_dir), self.mesh, self.run_dir)
        return params

    def sft_dir(self, sft_seed: int = 0) -> Path:
        """SFT seed 0 (data order ``config.seed``) trains in ``sft/``, seed ``i`` in ``sft_seed{i}/``."""
        return self.run_dir / ("sft" if sft_seed == 0 else f"sft_seed{sft_seed}")

    def sft_params(self, step: int, sft_seed: int = 0):
        return restore_params(CheckpointStore(self.sft_dir(sft_seed), "sft").path(step), self.abstract_params())

    def ppo_checkpoint(self, run: dict) -> Path:
        """The final checkpoint of a PPO run (its Orbax state; the HF export is output only).
        A run directory that moved is looked up under this study's ``ppo/<label>`` first."""
        local = self.run_dir / run.get("rel_dir", f"ppo/{run['label']}")
        return latest_checkpoint(local if local.is_dir() else run["run_dir"], "ppo")

    def load_ppo_params(self, run: dict):
        """The policy of a PPO run's final checkpoint, in the study's shardings."""
        return restore_params(self.ppo_checkpoint(run), self.abstract_params(), subtree=("policy",))

    def checkpoint_metadata(self, **extra) -> dict:
        """Metadata of the study's SFT / PPO / control checkpoints (``rotax export`` reads them)."""
        return {"model": base_model.checkpoint_model_metadata(self.model_cfg, self.base_dir), **extra}

    def evaluate(self, params, rule, *, n: int, seeds, seed_offset: int = 0) -> dict:
        """Accuracy pooled over ``seeds`` (each a fresh seeded hand set of ``n`` hands; the
        per-hand ``outcomes`` run seed by seed, ``groups`` holds the hands per seed)."""
        s = self.config.study
        hands = [h for seed in seeds for h in study_hands(rule, 1000 + seed_offset + seed, n, self.ranks)]
        result = evaluate_accuracy(self.model_cfg, params, self.tokenizer, self.renderer, hands, rule,
                                   attempts=s.attempts, max_new_tokens=s.max_new_tokens,
                                   batch_size=s.eval_batch_size, seed=seed_offset,
                                   options=evaluation_options(s))
        return {**result, "groups": [n] * len(seeds)}

    def evaluate_id_ood(self, params, *, n: int, seeds, seed_offset: int = 0) -> dict:
        return {"id": self.evaluate(params, Rule.ID, n=n, seeds=seeds, seed_offset=seed_offset),
                "ood": self.evaluate(params, Rule.OOD, n=n, seeds=seeds, seed_offset=seed_offset)}

    def evaluate_test(self, params) -> dict:
        """ID/OOD on the final test sets (``reset_hands`` × ``eval_seeds``), whose hands are
        disjoint from the curve hands the peak-OOD checkpoint was picked on (no winner's curse)
        and from the auto-select probe hands."""
        s = self.config.study
        return self.evaluate_id_ood(params, n=s.reset_hands, seeds=s.eval_seeds, seed_offset=TEST_SEED_OFFSET)


EVAL_DECODINGS = ("greedy", "sampled")


def evaluation_options(study) -> SamplingOptions:
    """Decoding of the study's evaluations: ``study.eval_decoding`` ``greedy`` (rotax) or
    ``sampled`` with ``eval_temperature``/``eval_top_k``/``eval_top_p``/
    ``eval_repetition_penalty`` (the reference samples with each model's generation config)."""
    decoding = getattr(study, "eval_decoding", "greedy")
    if decoding not in EVAL_DECODINGS:
        raise ValueError(f"study.eval_decoding {decoding!r}: choose one of {EVAL_DECODINGS}")
    if decoding == "greedy":
        return SamplingOptions(temperature=0.0, max_new_tokens=study.max_new_tokens)
    if not study.eval_temperature > 0:
        raise ValueError("study.eval_decoding=sampled needs study.eval_temperature > 0")
    return SamplingOptions(temperature=study.eval_temperature, top_k=study.eval_top_k,
                           top_p=study.eval_top_p, repetition_penalty=study.eval_repetition_penalty,
                           max_new_tokens=study.max_new_tokens)


def with_path(model_section, path):
    """A copy of the ``model`` section loading from ``path``."""
    section = copy.deepcopy(model_section)
    section.path = str(path)
    return section
