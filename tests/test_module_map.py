"""docs/architecture.md's module map matches the tree: every module under ``rotax/`` is named in
it, and every ``rotax.…`` name it mentions exists (a module, or an attribute of one)."""

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def _modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "rotax").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        out.append(".".join(parts))
    return out


def _defines(module: str, name: str) -> bool:
    """True when ``module``'s source defines or imports ``name`` at top level (no import)."""
    path = ROOT / Path(*module.split("."))
    source = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    tree = ast.parse(source.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def test_every_module_is_in_the_map():
    text = DOC.read_text()
    missing = [m for m in _modules() if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not name these modules: {missing}"


def test_every_name_in_the_map_exists():
    text = DOC.read_text()
    wrong = []
    for name in sorted(set(re.findall(r"`(rotax(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text))):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module or package
            module = ".".join(parts[:cut])
            path = ROOT / Path(*parts[:cut])
            if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
                break
        else:
            wrong.append(name)
            continue
        rest = parts[cut:]
        if rest and not _defines(module, rest[0]):
            wrong.append(name)
    assert not wrong, f"docs/architecture.md names what does not exist: {wrong}"


def test_the_public_api_the_doc_shows_is_importable():
    rotax = importlib.import_module("rotax")
    for name in ("load_hf", "forward", "export_hf", "make_mesh"):
        assert callable(getattr(rotax, name)), name
