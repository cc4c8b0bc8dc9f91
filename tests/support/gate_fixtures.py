"""A tiny toy-tokenizer model pair with planted damage, and a probe the damage hurts.

The base is a random 4-layer toy decoder whose LM head is scaled up so its next-token
distributions are peaked; the probe's answers are the base's own greedy words (computed with
transformers, the oracle), so the base predicts them well. The "tuned" copy has the top 20%
singular directions (U and V) of every matrix in the damaged layers rotated by ``angle`` into
the bottom directions (numpy SVD, independent of rotax's operators).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

from rotax.io.hf import export_hf_checkpoint, load_hf_checkpoint
from rotax.tasks.points.toy import write_toy_base
from rotax.tasks.points.toy_tokenizer import SPECIAL_TOKENS, build_toy_tokenizer

MODEL = dict(hidden=32, layers=4, heads=2, intermediate=64)


def rotate_top_directions(w: np.ndarray, share: float, angle: float) -> np.ndarray:
    """``w`` [m, n] with its top ``share`` of singular vectors (both sides) rotated by ``angle``
    radians toward the bottom ones (pairs i ↔ r-1-i), singular values kept."""
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    r = s.size
    k = max(1, int(round(share * r)))
    c, sn = np.cos(angle), np.sin(angle)
    for i in range(k):
        j = r - 1 - i
        u[:, i], u[:, j] = c * u[:, i] + sn * u[:, j], -sn * u[:, i] + c * u[:, j]
        vt[i], vt[j] = c * vt[i] + sn * vt[j], -sn * vt[i] + c * vt[j]
    return ((u * s) @ vt).astype(w.dtype)


def damaged(params, layers, angle: float):
    out = jax.tree.map(np.asarray, params)
    for group in ("self_attn", "mlp"):
        for name, leaf in out["model"]["layers"][group].items():
            if "weight" in leaf and leaf["weight"].ndim == 3:
                w = leaf["weight"].copy()
                for layer in layers:
                    w[layer] = rotate_top_directions(w[layer], 0.2, angle)
                leaf["weight"] = w
    return out


def make_pair(root, *, damage_layers=(0, 1), angle: float = 1.2, head_scale: float = 40.0,
              seed: int = 0, **model) -> tuple[Path, Path]:
    """``(base_dir, tuned_dir)`` under ``root``; ``damage_layers=()`` gives an identical copy;
    ``model`` overrides :data:`MODEL` (toy_hf_config keywords)."""
    root = Path(root)
    tok = build_toy_tokenizer()
    raw = write_toy_base(root / "raw", tok, jax.random.key(seed), **{**MODEL, **model})
    cfg, params = load_hf_checkpoint(raw)
    params = jax.tree.map(np.asarray, params)
    params["lm_head"]["weight"] = params["lm_head"]["weight"] * head_scale
    base = root / "base"
    export_hf_checkpoint(cfg, params, base, source=raw)
    tuned = root / "tuned"
    if damage_layers:
        export_hf_checkpoint(cfg, damaged(params, damage_layers, angle), tuned, source=raw)
    else:
        shutil.copytree(base, tuned)
    shutil.rmtree(raw)
    return base, tuned


def greedy_probe(base_dir, path, *, n: int = 64, prompt_words: int = 6, answer_words: int = 4,
                 seed: int = 0) -> Path:
    """A JSONL probe of ``n`` random word prompts whose answers are the base's greedy
    continuation (special tokens excluded), computed with transformers."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    specials = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    words = [w for w, i in sorted(tok.get_vocab().items(), key=lambda x: x[1])
             if i not in specials and w.isalnum()]
    rng = np.random.default_rng(seed)
    prompts = [[{"role": "user", "content": " ".join(rng.choice(words, prompt_words))}]
               for _ in range(n)]
    ids = [tok.encode(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False) for m in prompts]
    assert len({len(i) for i in ids}) == 1  # one word = one token: a rectangular batch
    batch = torch.tensor(ids)
    with torch.no_grad():
        for _ in range(answer_words):
            logits = model(input_ids=batch).logits[:, -1].clone()
            logits[:, specials] = -torch.inf
            batch = torch.cat([batch, logits.argmax(-1, keepdim=True)], 1)
    lines = [json.dumps({"messages": m, "answer": tok.decode(row[len(ids[0]):].tolist())})
             for m, row in zip(prompts, batch)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def torch_answer_nll(model_dir, probe_path) -> np.ndarray:
    """Per example: mean NLL of the answer tokens + EOS given the chat-template prompt, by
    transformers (float64 log-softmax of its float32 logits)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for line in Path(probe_path).read_text().splitlines():
        record = json.loads(line)
        text = tok.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=False)
        prompt = tok.encode(text, add_special_tokens=False)
        answer = tok.encode(record["answer"], add_special_tokens=False) + [tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        targets = ids[0, len(prompt):]
        picked = logp[len(prompt) - 1:-1].gather(1, targets[:, None])[:, 0]
        out.append(float(-picked.mean()))
    return np.asarray(out)
