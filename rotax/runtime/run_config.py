"""Run configs: ml-collections ``ConfigDict`` files, CLI overrides, the resolved config on disk.

A config file is a Python file (``configs/<name>.py``, also importable as the package data
module ``rotax.configs.<name>``) whose ``get_config()`` returns a ``ConfigDict``. Each module owns
its section and builds it with its own ``default_config()`` (``rotax.sft.step.default_config()`` is
the ``sft`` section, ``rotax.sft.data.default_config()`` the ``data`` section, ...); a config file
composes them and changes what it needs.

Overrides come from the command line as ``--config.sft.learning_rate=1e-6`` (or
``--config.sft.learning_rate 1e-6``); the text is parsed by the type of the value it replaces
(bool, int, float, str, tuple/list, or a typed placeholder). An unknown key raises
:class:`ConfigKeyError` listing the valid keys at that level. The run's resolved config is
written next to its outputs by :func:`write_resolved_config` (``config.json`` and
``config.txt``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
from ml_collections import config_dict

from rotax.runtime import sharding as sharding_lib

OVERRIDE_PREFIX = "--config."


class ConfigKeyError(ValueError):
    """An override names a key the config does not have; the message lists the valid keys."""


def default_config() -> ml_collections.ConfigDict:
    """The run-level keys every config has.

    ``seed`` (int): the root of all randomness (params init, data order, RNG in train states).
    ``run_dir`` (str): where the run writes everything (``runs/<name>``).
    ``mesh.shape`` (tuple of 3 ints): ``(data, fsdp, tensor)``; one ``-1`` entry takes the
    remaining devices (default ``(1, -1, 1)``: all devices on ``fsdp``).
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.run_dir = "runs/default"
    config.mesh = ml_collections.ConfigDict({"shape": (1, -1, 1)})
    return config


def mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, int, int]:
    """Resolves a ``(data, fsdp, tensor)`` shape with at most one ``-1`` against ``device_count``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape {shape} must be 3 positive ints (data, fsdp, tensor), "
                         f"one of them may be -1")
    if -1 in shape:
        known = -math.prod(shape)
        if device_count % known:
            raise ValueError(f"mesh.shape {shape}: {device_count} devices do not divide by {known}")
        shape = tuple(device_count // known if s == -1 else s for s in shape)
    return shape


# ---------------------------------------------------------------- loading


def mesh_from_config(config) -> "jax.sharding.Mesh":
    """The ``(data, fsdp, tensor)`` mesh of ``config.mesh.shape`` over all devices."""
    return sharding_lib.make_mesh(mesh_shape(config.mesh.shape, jax.device_count()))


def load_config(source: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from ``source`` and applies ``overrides``; returns a locked config.

    ``source`` is a file path (``configs/toy.py``) or a module name in ``rotax.configs``
    (``toy``). ``overrides`` are ``"key.path=value"`` strings (without ``--config.``).
    Raises FileNotFoundError for a missing file and ConfigKeyError for an unknown key.
    """
    module = _import_config_module(str(source))
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {source}: no get_config() function")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config {source}: get_config() returned {type(config).__name__}, "
                         f"expected ml_collections.ConfigDict")
    config.lock()
    apply_overrides(config, overrides)
    return config


def _import_config_module(source: str):
    path = Path(source)
    if path.suffix == ".py" or os.sep in source or "/" in source:
        if not path.is_file():
            raise FileNotFoundError(f"config file {source} does not exist")
        spec = importlib.util.spec_from_file_location(f"rotax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(f"rotax.configs.{source}")
    except ModuleNotFoundError as err:
        if err.name != f"rotax.configs.{source}":
            raise
        raise FileNotFoundError(f"no config file {source!r} and no module rotax.configs.{source}") from err


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits ``argv`` into ``(overrides, rest)``: ``--config.a.b=v`` and ``--config.a.b v``
    become ``"a.b=v"``; every other argument is returned in ``rest`` in order."""
    overrides, rest = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg}: missing value")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def add_config_arguments(parser, default: str | None = None) -> None:
    """Adds ``--config FILE`` to an argparse (sub)parser and makes it accept any number of
    ``--config.key=value`` overrides, collected into ``args.config_overrides`` (list of
    ``"key=value"``). Use :func:`config_from_args` to load the result."""
    parser.add_argument("--config", required=default is None, default=default, metavar="FILE",
                        help="config file (configs/<name>.py) or a name in rotax.configs; "
                             "override keys with --config.<section>.<key>=<value>")
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        overrides, rest = split_overrides(list(args) if args is not None else [])
        namespace, extra = parse_known(rest, namespace)
        namespace.config_overrides = overrides
        return namespace, extra

    parser.parse_known_args = parse_known_args


def config_from_args(args) -> ml_collections.ConfigDict:
    """The config an argparse namespace from :func:`add_config_arguments` names."""
    return load_config(args.config, getattr(args, "config_overrides", ()))


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies ``"key.path=value"`` strings in order (in place)."""
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"config override {override!r} must look like key.path=value")
        key, text = override.split("=", 1)
        set_value(config, key.strip(), text)


def set_value(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Sets ``config.<dotted_key>`` from ``text`` parsed as the type of the current value."""
    parts = dotted_key.split(".")
    node = config
    for depth, name in enumerate(parts):
        where = ".".join(parts[:depth]) or "<top level>"
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigKeyError(f"config key {dotted_key!r}: {where} is a value, not a section")
        if name not in node:
            valid = ", ".join(sorted(node.keys()))
            raise ConfigKeyError(f"unknown config key {dotted_key!r}: no {name!r} in {where}; "
                                 f"valid keys there: {valid}")
        if depth < len(parts) - 1:
            node = node[name]
    name = parts[-1]
    current = node._fields[name]  # a FieldReference for placeholders, else the value
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigKeyError(f"config key {dotted_key!r} is a section (keys: "
                             f"{', '.join(sorted(current.keys()))}); set one of its keys")
    if isinstance(current, config_dict.FieldReference):
        kind, value = current.get_type(), current.get()
    else:
        kind, value = type(current), current
    with node.unlocked():
        node[name] = parse_value(text, kind, value, dotted_key)


def parse_value(text: str, kind: type, current: Any, key: str = "value") -> Any:
    """Parses ``text`` as ``kind`` (the type of ``current``). Raises ValueError with the key."""
    stripped = text.strip()
    if stripped.lower() in ("none", "null") and current is None:
        return None
    try:
        if kind is bool:
            low = stripped.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind is int:
            return int(stripped)
        if kind is float:
            return float(stripped)
        if kind is str:
            return text
        if kind in (tuple, list):
            items = _parse_sequence(stripped)
            if current:  # type the items like the existing ones
                item_kind = type(current[0])
                items = [parse_value(str(x), item_kind, current[0], key) if not isinstance(x, item_kind)
                         else x for x in items]
            return kind(items)
        if kind is type(None) or current is None:
            try:
                return ast.literal_eval(stripped)
            except (ValueError, SyntaxError):
                return text
        return kind(stripped)
    except (ValueError, TypeError, SyntaxError) as err:
        raise ValueError(f"config key {key!r}: cannot read {text!r} as {kind.__name__} ({err})") from None


def _parse_sequence(text: str) -> list:
    if text.startswith(("(", "[")):
        value = ast.literal_eval(text)
        return list(value) if isinstance(value, (tuple, list)) else [value]
    if not text:
        return []
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            out.append(ast.literal_eval(item))
        except (ValueError, SyntaxError):
            out.append(item)
    return out


# ---------------------------------------------------------------- writing / reading back


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """A JSON-able dict of ``config`` (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A ``ConfigDict`` from :func:`config_to_dict` output (e.g. a checkpoint's metadata)."""
    return ml_collections.ConfigDict(values)


def write_resolved_config(config: ml_collections.ConfigDict, out_dir: str | os.PathLike,
                          name: str = "config") -> Path:
    """Writes ``<out_dir>/<name>.json`` (machine-readable) and ``<name>.txt`` (the repr);
    returns the JSON path. Both are written atomically (temp file + rename), by process 0 only."""
    import jax

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    if jax.process_index() != 0:
        return path
    write_text_atomic(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
    write_text_atomic(out_dir / f"{name}.txt", repr(config))
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else the first free ``<path>-1``, ``<path>-2``, ..."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate
