"""A thin wrapper over transformers' tokenizers: chat prompts, SFT targets, EOS ids, decoding.

Conventions every trainer and sampler relies on:

* a prompt is the model's chat template applied to the dialogue with
  ``add_generation_prompt=True`` — rotax adds no system prompt of its own;
* an answer (the SFT target, and what the sampler generates) is the answer text's ids followed
  by one EOS id (the tokenizer's ``eos_token``: ``<|eot_id|>`` for Llama-3 instruct,
  ``<|im_end|>`` for Qwen2.5 instruct, ``<eos>`` for the toy tokenizer);
* decoding a response stops at its first EOS and drops special tokens.

The toy study's word-level tokenizer lives with the task, in :mod:`rotax.tasks.points.toy_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

def load_tokenizer(path: str | Path):
    """The tokenizer saved in ``path`` (an HF model or tokenizer directory), via AutoTokenizer.

    Raises FileNotFoundError when the directory holds no tokenizer files, ValueError when it
    has no chat template (rotax always prompts through one)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                    "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok = AutoTokenizer.from_pretrained(str(path))
    if not tok.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template")
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no eos_token")
    return tok


def prompt_text(tok, messages: Sequence[dict]) -> str:
    """The chat-template text of ``messages`` with the generation prompt appended."""
    return tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def encode_prompt(tok, messages: Sequence[dict] | str) -> list[int]:
    """Token ids of the dialogue ``messages`` (``[{"role", "content"}, ...]``; a plain string is
    one user turn) in the chat template, ending with the generation prompt.

    The template itself writes BOS and role markers, so no special tokens are added on top."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return tok.encode(prompt_text(tok, messages), add_special_tokens=False)


def encode_answer(tok, text: str) -> list[int]:
    """The SFT target of ``text``: its ids (no special tokens added) followed by the EOS id."""
    return tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


def eos_ids(tok, cfg=None) -> tuple[int, ...]:
    """Every id that ends an answer: the tokenizer's EOS plus the model config's
    ``eos_token_ids`` (Llama-3 lists several), sorted and without duplicates."""
    ids = {int(tok.eos_token_id)}
    if cfg is not None:
        ids.update(int(i) for i in cfg.eos_token_ids)
    return tuple(sorted(ids))


def pad_id(tok, cfg=None) -> int:
    """The id used for padding: the tokenizer's pad token, else the config's, else EOS."""
    for candidate in (tok.pad_token_id, getattr(cfg, "pad_token_id", None), tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def truncate_at_eos(ids: Iterable[int], stop_ids: Iterable[int]) -> list[int]:
    """``ids`` up to and including the first id in ``stop_ids``."""
    stop, out = set(int(i) for i in stop_ids), []
    for i in ids:
        out.append(int(i))
        if out[-1] in stop:
            break
    return out


def decode_response(tok, ids: Iterable[int], stop_ids: Iterable[int] | None = None) -> str:
    """The text of one generated answer: cut after the first EOS (``stop_ids``, default the
    tokenizer's EOS), special tokens dropped."""
    ids = truncate_at_eos(ids, stop_ids if stop_ids is not None else (tok.eos_token_id,))
    return tok.decode(ids, skip_special_tokens=True)


def decode_responses(tok, rows: Iterable[Iterable[int]], stop_ids=None) -> list[str]:
    """:func:`decode_response` of every row."""
    return [decode_response(tok, row, stop_ids) for row in rows]
