"""Which tensors an operation touches: module types and layers, always in HF layer numbering.

Module types are ``q k v o gate up down`` (per-layer matrices) and ``embed head`` (the token
embedding and the LM head). Layer specs speak HF numbering: stacked index ``i`` of the canonical
tree is HF layer ``layer_ids[i]`` (Mllama's 40 text layers stack only the 32 self-attention
layers, so "first 25%" = HF layers 0-9 of which the stacked ones are affected).

Layer spec grammar (comma-separated parts, or a list of ints, or None/"all" for every layer):
``"7"`` one layer; ``"0-9"`` an inclusive range; ``"first 3"`` / ``"last 3"`` a count;
``"first 25%"`` / ``"last 25%"`` / ``"25%"`` / ``"0.25"`` a fraction of the HF layer count
(``round_half_up(f * N)``, at least 1; a bare fraction means "first").
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Sequence

from rotax.runtime.tree_paths import flatten_by_path, is_stacked

LAYER_MODULES = ("q", "k", "v", "o", "gate", "up", "down")
MODULE_TYPES = LAYER_MODULES + ("embed", "head")
_MODULE_OF_KEY = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
    "up_proj": "up", "down_proj": "down", "embed_tokens": "embed", "lm_head": "head",
}
_ALIASES = {**_MODULE_OF_KEY, **{m: m for m in MODULE_TYPES}}

Path = tuple[str, ...]


def module_type(path: Sequence[str] | str) -> str | None:
    """Module type (``"q"`` ... ``"head"``) of a canonical path or HF name; None for others."""
    parts = path.split(".") if isinstance(path, str) else path
    for part in parts:
        if part in _MODULE_OF_KEY:
            return _MODULE_OF_KEY[part]
    return None


def is_matrix(path: Sequence[str], ndim: int) -> bool:
    """True for a weight matrix: ``[L, out, in]`` under ``model/layers``, ``[out, in]`` elsewhere."""
    return path[-1] == "weight" and ndim == (3 if is_stacked(path) else 2)


def parse_modules(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Module types from ``"q,k,v"``, a list, HF names (``q_proj``) or ``"all"``.

    None means the seven per-layer matrices (embeddings and head are always an explicit
    choice). Raises ValueError naming an unknown module."""
    if spec is None:
        return LAYER_MODULES
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if items == ["all"]:
        return MODULE_TYPES
    out = []
    for item in items:
        if item not in _ALIASES:
            raise ValueError(f"unknown module {item!r}; valid: {', '.join(MODULE_TYPES)}")
        if _ALIASES[item] not in out:
            out.append(_ALIASES[item])
    if not out:
        raise ValueError("empty module list")
    return tuple(out)


def _fraction_count(fraction: float, total: int, spec: str) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"layer fraction in {spec!r} must lie in (0, 1]")
    return max(1, int(math.floor(fraction * total + 0.5)))


_PART = re.compile(r"^(?:(first|last)\s+)?(\d*\.?\d+)\s*(%?)$")


def parse_layers(spec: str | int | Iterable[int] | None, num_hidden_layers: int) -> tuple[int, ...]:
    """Sorted HF layer numbers selected by ``spec`` out of ``num_hidden_layers`` HF layers.

    Raises ValueError for a malformed spec, a layer outside ``[0, num_hidden_layers)`` or an
    empty selection."""
    total = int(num_hidden_layers)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return tuple(range(total))
    if isinstance(spec, int):
        chosen = {spec}
    elif isinstance(spec, str):
        chosen = set()
        for part in (p.strip().lower() for p in spec.split(",")):
            chosen |= _parse_part(part, total, spec)
    else:
        chosen = {int(i) for i in spec}
    bad = sorted(i for i in chosen if not 0 <= i < total)
    if bad:
        raise ValueError(f"layer spec {spec!r}: layer {bad[0]} is outside the model's HF layers "
                         f"0-{total - 1}")
    if not chosen:
        raise ValueError(f"layer spec {spec!r} selects no layer")
    return tuple(sorted(chosen))


def _parse_part(part: str, total: int, spec: str) -> set[int]:
    if re.fullmatch(r"\d+\s*-\s*\d+", part):
        lo, hi = (int(x) for x in part.split("-"))
        if hi < lo:
            raise ValueError(f"layer range {part!r} in {spec!r} is empty (end < start)")
        return set(range(lo, hi + 1))
    match = _PART.match(part)
    if not match:
        raise ValueError(f"cannot parse layer spec part {part!r} of {spec!r}; use e.g. '3', "
                         "'0-9', 'first 25%', 'last 25%', '0.25'")
    side, number, percent = match.groups()
    if not percent and "." not in number:
        if not side:
            return {int(number)}
        count = int(number)  # "first 3" / "last 3": a layer count
        if not 0 < count <= total:
            raise ValueError(f"layer count in {spec!r} must lie in [1, {total}]")
    else:
        count = _fraction_count(float(number) / (100.0 if percent else 1.0), total, spec)
    return set(range(total - count, total)) if side == "last" else set(range(count))


@dataclasses.dataclass(frozen=True)
class Selector:
    """Layers (HF numbering spec, see module doc) and module types an operator touches.

    ``layers=None`` means every layer; ``modules=None`` the seven per-layer matrices."""

    layers: str | int | tuple[int, ...] | None = None
    modules: str | tuple[str, ...] | None = None

    def resolve(self, tree, layer_ids: Sequence[int] | None = None,
                num_hidden_layers: int | None = None) -> dict[Path, tuple[int, ...] | None]:
        """Matrix leaves of ``tree`` to touch: ``{path: stacked indices}`` for ``[L, out, in]``
        leaves, ``{path: None}`` for 2-D embed/head. Raises ValueError if nothing matches."""
        modules = parse_modules(self.modules)
        paths = list(flatten_by_path(tree).items())
        num_stacked = next((x.shape[0] for p, x in paths if is_stacked(p)), 0)
        ids, total = layer_numbering(num_stacked, layer_ids, num_hidden_layers)
        wanted = set(parse_layers(self.layers, total)) if num_stacked else set()
        stacked_indices = tuple(i for i, hf in enumerate(ids) if hf in wanted)
        if num_stacked and not stacked_indices and set(modules) & set(LAYER_MODULES):
            raise ValueError(f"layer spec {self.layers!r} selects HF layers {sorted(wanted)}, none "
                             f"of which is a stacked layer (stacked HF layers: {list(ids)})")
        out: dict[Path, tuple[int, ...] | None] = {}
        for path, leaf in paths:
            if not is_matrix(path, len(leaf.shape)) or module_type(path) not in modules:
                continue
            if is_stacked(path):
                if stacked_indices:
                    out[path] = stacked_indices
            else:
                out[path] = None
        if not out:
            raise ValueError(
                f"selector (layers={self.layers!r}, modules={modules}) matches no tensor: HF "
                f"layers {sorted(wanted)} vs stacked HF layers {list(ids)}")
        return out


def layer_numbering(num_stacked: int, layer_ids: Sequence[int] | None,
                    num_hidden_layers: int | None) -> tuple[tuple[int, ...], int]:
    """``(layer_ids, HF layer count)`` with defaults ``range(L)`` and ``max(layer_ids) + 1``."""
    ids = tuple(int(i) for i in layer_ids) if layer_ids is not None else tuple(range(num_stacked))
    if len(ids) != num_stacked:
        raise ValueError(f"layer_ids has {len(ids)} entries but the tree stacks {num_stacked} layers")
    total = int(num_hidden_layers) if num_hidden_layers is not None else (max(ids) + 1 if ids else 0)
    return ids, total


def stacked_indices(layers, layer_ids: Sequence[int] | None, num_stacked: int,
                    num_hidden_layers: int | None = None) -> tuple[int, ...]:
    """Stacked indices of the HF layers selected by the spec ``layers``. Raises ValueError
    when none of the selected HF layers is stacked (e.g. only Mllama cross-attention layers)."""
    ids, total = layer_numbering(num_stacked, layer_ids, num_hidden_layers)
    wanted = set(parse_layers(layers, total))
    out = tuple(i for i, hf in enumerate(ids) if hf in wanted)
    if not out:
        raise ValueError(f"layer spec {layers!r} selects HF layers {sorted(wanted)}, none of which "
                         f"is a stacked layer (stacked HF layers: {list(ids)})")
    return out


def parse_rank(text: str) -> int | float:
    """``"128"`` → rank 128; ``"0.2"`` or ``"20%"`` → fraction 0.2."""
    text = str(text).strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    return float(text) if "." in text else int(text)
