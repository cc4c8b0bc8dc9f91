"""Canonical-tree paths as tuples of strings, and flat ``{path: leaf}`` views of a pytree.

A path ``("model", "layers", "mlp", "up_proj", "weight")`` names a leaf of the canonical tree
(docs/architecture.md); dict keys become their string, any other key its ``str``."""

from __future__ import annotations

from typing import Any

import jax

Path = tuple[str, ...]


def path_keys(path) -> Path:
    """The string keys of a ``jax.tree_util`` key path."""
    return tuple(getattr(k, "key", str(k)) for k in path)


def is_stacked(path) -> bool:
    """True for leaves of the stacked ``model/layers`` subtree (axis 0 = layer), also where the
    canonical tree sits inside a wrapper (PPO's ``policy/model/layers/...``)."""
    path = tuple(path)
    return any(path[i:i + 2] == ("model", "layers") for i in range(len(path) - 2))


def flatten_by_path(tree) -> dict[Path, Any]:
    """``{path: leaf}`` of every leaf of ``tree``, in tree order."""
    return {path_keys(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_like(template, flat: dict[Path, Any]):
    """The tree shaped like ``template`` whose leaf at each path is ``flat[path]``."""
    return jax.tree_util.tree_map_with_path(lambda p, _: flat[path_keys(p)], template)
