"""Device mesh, logical-axis rules and the shardings of params and batches.

Mesh axes are ``("data", "fsdp", "tensor")``. Every canonical parameter gets logical axis names
from its HF name; a short rule table maps them to mesh axes. A dimension that does not divide
its mesh axis is replicated instead (tiny test models), never silently padded.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rotax.runtime.tree_paths import is_stacked, path_keys

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (None = replicated)
LOGICAL_RULES = {
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
    "batch": ("data", "fsdp"),
    "sequence": None,
}

# module name -> logical axes of its weight in HF orientation (out, in), without the layer axis
_MATRIX_AXES = {
    "q_proj": ("heads", "embed"),
    "k_proj": ("kv_heads", "embed"),
    "v_proj": ("kv_heads", "embed"),
    "o_proj": ("embed", "heads"),
    "gate_proj": ("mlp", "embed"),
    "up_proj": ("mlp", "embed"),
    "down_proj": ("embed", "mlp"),
    "embed_tokens": ("vocab", "embed"),
    "lm_head": ("vocab", "embed"),
}


def make_mesh(shape: Sequence[int] | None = None, devices=None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh; ``shape`` defaults to ``(1, n_devices, 1)``.

    Raises ValueError when the product of ``shape`` is not the device count."""
    explicit = devices is not None
    devices = list(devices if explicit else jax.devices())
    shape = tuple(shape) if shape is not None else (1, len(devices), 1)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {shape} must have 3 entries for axes {MESH_AXES}")
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {shape} (product {math.prod(shape)}) does not match the "
                         f"{len(devices)} available devices")
    if not explicit:
        # all devices: let jax order them along the physical topology (TPU ICI rings)
        return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    device_array = np.asarray(devices).reshape(shape)
    # Auto axis types: GSPMD propagation. (jax 0.10 defaults to Explicit, under which a
    # matmul with a sharded contracting dimension raises ShardingTypeError.)
    return Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def canonical_mesh(mesh: Mesh) -> Mesh:
    """The rotax mesh equivalent to ``mesh``: same devices, axes ``("data", "fsdp", "tensor")``
    with Auto axis types (an ``AbstractMesh`` gives an ``AbstractMesh``).

    Accepts any ``jax.sharding.Mesh`` whose axis names are a subset of ``MESH_AXES`` in that
    order (e.g. ``jax.make_mesh((4, 2), ("fsdp", "tensor"))``; missing axes get size 1) and
    any axis types: ``jax.make_mesh`` defaults to Explicit, under which XLA refuses rotax's
    sharded matmuls and chunked loads, so Explicit and Manual axes become Auto (GSPMD
    propagation). Raises ValueError naming the axes for any other mesh."""
    abstract = isinstance(mesh, jax.sharding.AbstractMesh)
    if not (abstract or isinstance(mesh, Mesh)):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (from rotax.make_mesh or jax.make_mesh), "
                        f"got {type(mesh).__name__}")
    auto = jax.sharding.AxisType.Auto
    if tuple(mesh.axis_names) == MESH_AXES and all(t == auto for t in mesh.axis_types):
        return mesh
    if abstract:  # shapes only (scripts/memory_plan.py; tracing inside jax.jit)
        return jax.sharding.AbstractMesh(_canonical_sizes(mesh), MESH_AXES, axis_types=(auto,) * len(MESH_AXES))
    devices = np.asarray(mesh.devices).reshape(_canonical_sizes(mesh))
    return Mesh(devices, MESH_AXES, axis_types=(auto,) * len(MESH_AXES))


def _canonical_sizes(mesh) -> tuple[int, ...]:
    """The ``MESH_AXES`` sizes of a (concrete or abstract) mesh whose axis names are a subset
    of ``MESH_AXES`` in that order; ValueError naming the axes otherwise."""
    names = tuple(mesh.axis_names)
    if len(set(names)) != len(names) or any(n not in MESH_AXES for n in names) or \
            list(names) != [a for a in MESH_AXES if a in names]:
        raise ValueError(
            f"mesh axes {names}: rotax shards over axes {MESH_AXES} (a subset, in that order, is "
            f"fine); build it with rotax.make_mesh((data, fsdp, tensor)) or "
            f"jax.make_mesh(shape, {MESH_AXES})")
    sizes = dict(mesh.shape)
    return tuple(sizes.get(a, 1) for a in MESH_AXES)


def auto_axes_context():
    """A context manager for rotax's computations: inside ``jax.set_mesh(mesh)`` whose axes are
    not all Auto (``jax.make_mesh``'s default Explicit), it traces under the equivalent
    :func:`canonical_mesh` instead, the mesh rotax places parameters on; otherwise a no-op."""
    ambient = jax.sharding.get_abstract_mesh()
    if ambient.empty or all(t == jax.sharding.AxisType.Auto for t in ambient.axis_types):
        return contextlib.nullcontext()
    # from the abstract mesh alone: inside jax.jit (rotax.forward) there is no concrete one
    return jax.sharding.use_abstract_mesh(canonical_mesh(ambient))


def logical_axes(path: Sequence[str], ndim: int) -> tuple[str | None, ...]:
    """Logical axis names of the canonical leaf at ``path`` (e.g. ``("model", "layers",
    "self_attn", "q_proj", "weight")``) with ``ndim`` dimensions."""
    stacked = is_stacked(path)
    module = path[-2] if len(path) >= 2 else ""
    if path[-1] == "weight" and module in _MATRIX_AXES:
        axes = _MATRIX_AXES[module]
    elif path[-1] == "bias" and module in _MATRIX_AXES:
        axes = _MATRIX_AXES[module][:1]
    else:
        axes = ("norm",) * (ndim - (1 if stacked else 0))
    axes = (("layers",) if stacked else ()) + tuple(axes)
    if len(axes) != ndim:
        return (None,) * ndim
    return axes


def _spec(axes, shape, mesh: Mesh) -> P:
    parts = []
    for name, dim in zip(axes, shape):
        mesh_axis = LOGICAL_RULES.get(name) if name else None
        names = (mesh_axis,) if isinstance(mesh_axis, str) else (mesh_axis or ())
        size = math.prod(mesh.shape[a] for a in names) if names else 1
        parts.append(mesh_axis if names and dim % size == 0 and size > 1 else None)
    return P(*parts)


def param_shardings(params_or_shapes, mesh: Mesh):
    """A tree of ``NamedSharding`` matching the canonical tree ``params_or_shapes``."""

    mesh = canonical_mesh(mesh)

    def leaf(path, x):
        keys = path_keys(path)
        return NamedSharding(mesh, _spec(logical_axes(keys, len(x.shape)), x.shape, mesh))

    return jax.tree_util.tree_map_with_path(leaf, params_or_shapes)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shards axis 0 (batch) over ``("data", "fsdp")``; other axes replicated."""
    return NamedSharding(canonical_mesh(mesh), P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(canonical_mesh(mesh), P())


def describe(sharding) -> str:
    """Short human-readable form of a sharding, e.g. ``P(None, 'tensor', 'fsdp')``."""
    spec = getattr(sharding, "spec", None)
    return str(spec) if spec is not None else type(sharding).__name__
