"""The package layout holds: imports run one way, no cycles, no hidden rotax imports.

Every module under ``rotax/`` is parsed (AST, nothing imported). Each module belongs to a layer;
a module may import its own layer's modules (without cycles) and the layers below it:

    (runtime, stats) < models < io < sampling < training < (sft, rl, analysis) < task adapters < gate
    < study < configs < notebook < commands

The pure GeneralPoints core (``rotax/tasks/points``: cards, formula, parsing, render, solver,
verifier and the package's ``__init__``) imports nothing else of rotax, and only the task
adapters and the layers above them may import it. ``sft``, ``rl`` and ``analysis`` are peers:
none imports another. Function-local rotax imports are allowed only in ``rotax/commands/``,
``rotax/cli.py`` and the few places listed in ``LOCAL_IMPORTS_ALLOWED`` (each with its reason).
``if TYPE_CHECKING:`` imports count like any other import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rotax"

LAYERS = ["runtime|stats", "models", "io", "sampling", "training", "sft|rl|analysis", "tasks",
          "gate", "study", "configs", "notebook", "commands"]
TASK_CORE = {"rotax.tasks.points", "rotax.tasks.points.cards", "rotax.tasks.points.formula",
             "rotax.tasks.points.parsing", "rotax.tasks.points.render",
             "rotax.tasks.points.solver", "rotax.tasks.points.verifier", "rotax.tasks"}

#: (importing module, imported module) -> why the import stays inside a function.
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int | None:
    """Layer index of a module (None: the root package or cli, which sit on top)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "cli":
        return None
    group = parts[1]
    for index, name in enumerate(LAYERS):
        if group in name.split("|"):
            return index
    raise AssertionError(f"{module}: no layer for rotax.{group} — add it to LAYERS")


def resolve(current: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The rotax modules an import statement loads (submodules named in ``from X import y``
    count as modules)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "rotax"]
    if node.level:
        base = current.split(".")
        if not MODULES[current].name == "__init__.py":
            base = base[:-1]
        base = base[:len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "rotax":
        return []
    out = []
    for alias in node.names:
        candidate = f"{source}.{alias.name}"
        out.append(candidate if candidate in MODULES else source)
    return sorted(set(out))


def imports_of(module: str):
    """``[(imported module, line, inside a function)]`` for one module."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in resolve(module, child):
                    found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_import_resolves_to_a_module():
    missing = [(m, t, line) for m, edges in GRAPH.items() for t, line, _ in edges if t not in MODULES]
    assert not missing, f"imports of rotax modules that do not exist: {missing}"


def test_imports_run_one_way():
    wrong = []
    for module, edges in GRAPH.items():
        here = layer(module)
        for target, line, _ in edges:
            if target == "rotax" or target not in MODULES:
                continue
            there = layer(target)
            if module in TASK_CORE:
                if target not in TASK_CORE:
                    wrong.append(f"{module}:{line} -> {target} (the task core imports no other rotax module)")
                continue
            if target in TASK_CORE and here is not None and here < LAYERS.index("tasks"):
                wrong.append(f"{module}:{line} -> {target} (generic code must not know the task)")
                continue
            if here is None or there is None:
                if there is None and here is not None:
                    wrong.append(f"{module}:{line} -> {target} (imports the package root / cli)")
                continue
            same_group = module.split(".")[1] == target.split(".")[1]
            if there > here or (there == here and not same_group):
                wrong.append(f"{module}:{line} -> {target} ({LAYERS[here]} may not import {LAYERS[there]})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = {m: sorted({t for t, _, _ in GRAPH[m] if t in MODULES and t != m}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m)


def test_function_local_imports_only_where_allowed():
    hidden = []
    for module, edges in GRAPH.items():
        if module.startswith("rotax.commands") or module == "rotax.cli":
            continue
        for target, line, in_function in edges:
            if in_function and (module, target) not in LOCAL_IMPORTS_ALLOWED:
                hidden.append(f"{module}:{line} imports {target} inside a function")
    assert not hidden, "function-local rotax imports outside the allowance:\n" + "\n".join(hidden)
    assert len(LOCAL_IMPORTS_ALLOWED) <= 5


def test_commands_do_not_import_each_other():
    crossing = [(m, t) for m, edges in GRAPH.items() if m.startswith("rotax.commands.")
                for t, _, _ in edges if t.startswith("rotax.commands.") and t != m]
    assert not crossing, crossing


def test_the_layering_check_can_fail(tmp_path):
    """The checker itself: an upward import and a cycle in a fake tree are caught."""
    assert layer("rotax.models.decoder") < layer("rotax.io.hf") < layer("rotax.study.pipeline")
    node = ast.parse("from rotax.sampling import sampler").body[0]
    assert resolve("rotax.rl.rollout", node) == ["rotax.sampling.sampler"]
    node = ast.parse("from rotax.tasks.points import Rule").body[0]
    assert resolve("rotax.rl.rollout", node) == ["rotax.tasks.points"]
