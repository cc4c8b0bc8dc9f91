"""The ``model`` config section: which HF directory a run starts from, and in which dtypes.

``model.path`` is an HF model directory, or a name registered with :func:`register_base`
(the toy study registers ``"toy"``: a builder that returns the directory of its pre-trained
toy base, creating it on first use). Loading keeps master weights in ``model.param_dtype``
and computes in ``model.compute_dtype`` (e.g. float32 master weights, bfloat16 compute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import ml_collections

from rotax.io.hf import load_hf_checkpoint
from rotax.models.config import ModelConfig

# name -> builder(model_section, run_dir) -> HF directory
_BASES: dict[str, Callable] = {}


def default_config() -> ml_collections.ConfigDict:
    """The ``model`` section.

    path: HF directory or a registered base name. param_dtype: master weights (float32;
    ``""`` keeps the stored dtype). compute_dtype: activations/matmuls (float32 or bfloat16;
    ``""`` = param_dtype). remat: rematerialize each layer in the backward pass.
    """
    return ml_collections.ConfigDict({
        "path": "",
        "param_dtype": "float32",
        "compute_dtype": "float32",
        "remat": False,
    })


def register_base(name: str, builder: Callable) -> None:
    """Makes ``model.path = name`` resolve to ``builder(model_section, run_dir)`` (a path)."""
    _BASES[name] = builder


def resolve_path(model, run_dir) -> Path:
    """The HF directory of ``model.path`` (running a registered builder if it names one)."""
    if model.path in _BASES:
        return Path(_BASES[model.path](model, run_dir))
    path = Path(model.path)
    if not model.path or not (path / "config.json").is_file():
        known = ", ".join(sorted(_BASES)) or "none registered"
        raise FileNotFoundError(f"model.path={model.path!r} is not an HF model directory "
                                f"(no config.json) nor a registered base ({known})")
    return path


def load_base(model, mesh, run_dir):
    """``(ModelConfig, params, source_dir)``: the base named by the ``model`` section, each
    leaf placed in its sharding on ``mesh``."""
    source = resolve_path(model, run_dir)
    cfg, params = load_hf_checkpoint(source, mesh=mesh, dtype=model.param_dtype or None,
                                     compute_dtype=model.compute_dtype or None, remat=model.remat)
    return cfg, params, source


def model_config(model, source):
    """The ``ModelConfig`` of ``source`` with the section's dtypes and remat (no weights read)."""
    cfg = ModelConfig.from_hf_dir(source)
    param_dtype = model.param_dtype or _stored_dtype(cfg)
    return cfg.replace(param_dtype=param_dtype, dtype=model.compute_dtype or param_dtype,
                       remat=model.remat)


def checkpoint_model_metadata(cfg, source) -> dict:
    """The ``model`` entry of a training checkpoint's metadata: enough for `rotax export`,
    `rotax ppo --init` and `rotax gate` to rebuild the model config without the source."""
    return {"source": str(source), "hf_config": cfg.hf_config,
            "param_dtype": cfg.param_dtype, "compute_dtype": cfg.dtype}


def _stored_dtype(cfg) -> str:
    hf = cfg.hf_config or {}
    text = hf.get("text_config", hf)
    return str(text.get("dtype") or text.get("torch_dtype") or hf.get("dtype") or "float32")
