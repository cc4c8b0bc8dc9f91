"""rotax: study and repair what fine-tuning does to a language model's weights.

Public API (see docs/architecture.md):
    cfg, params = rotax.load_hf(path, mesh=None, dtype=None)
    logits = rotax.forward(cfg, params, tokens)
    rotax.export_hf(cfg, params, out_dir, source=path)
"""

import os as _os

# XLA:CPU calls LAPACK (scipy's OpenBLAS) from its own worker threads; OpenBLAS's thread server
# then busy-waits against XLA's pool. Measured here: the smoke study's spectral stage took
# >6 min with OpenBLAS threads and 33 s with OPENBLAS_NUM_THREADS=1. Set it before OpenBLAS
# loads; an explicit value in the environment wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from rotax.models.config import ModelConfig, UnsupportedConfigError
from rotax.models.decoder import apply, forward, init_cache, init_params, param_shapes
from rotax.io.hf import CheckpointError, export_hf_checkpoint, load_hf_checkpoint
from rotax.runtime.sharding import make_mesh

__version__ = "0.1.0"


def load_hf(path, *, mesh=None, dtype=None, compute_dtype=None, remat=False):
    """``(ModelConfig, params)`` from an HF directory, each leaf placed in its sharding on
    ``mesh`` (default: one device). See :func:`rotax.io.hf.load_hf_checkpoint`."""
    return load_hf_checkpoint(path, mesh=mesh, dtype=dtype, compute_dtype=compute_dtype, remat=remat)


def export_hf(cfg, params, out_dir, *, source=None, max_shard_bytes=4 << 30):
    """Writes ``params`` as an HF directory transformers can load (see
    :func:`rotax.io.hf.export_hf_checkpoint`)."""
    return export_hf_checkpoint(cfg, params, out_dir, source=source, max_shard_bytes=max_shard_bytes)


__all__ = ["ModelConfig", "UnsupportedConfigError", "CheckpointError", "apply", "forward",
           "init_cache", "init_params", "param_shapes", "load_hf", "export_hf", "make_mesh"]
