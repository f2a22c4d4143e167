"""The import layering of STYLE.md, checked on the source with ``ast``.

Data flows one way: a subpackage may import only from lower layers (or from
itself).  Every import counts, also those inside functions: a lazy import
still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lsm

PACKAGE = Path(lsm.__file__).parent

#: Lowest first.  Names on one row are peers and must not import each other.
LAYERS: list[set[str]] = [
    {"errors"},
    {"datasets"},  # the demo data generator (config resolves the built-in demo regions)
    {"config"},
    {"io"},
    {"stack", "sampling"},
    {"models"},
    {"transfer", "evaluate"},
    {"explain", "mapping"},
    {"workflows"},
    {"api"},
    {"cli"},
]
#: Deliberate exceptions, each with its reason: (importing module prefix, imported module).
ALLOWED = {
    # config validates family names (and their parameters) against the one family
    # registry; lsm.models.base itself imports only errors and io.artifacts.
    ("lsm.config", "lsm.models.base"),
    # the lsm.explain package shares its name with the API function lsm.explain; calling
    # the package forwards to it (a lazy import inside __call__, never at import time)
    ("lsm.explain", "lsm.api"),
}
#: Third-party packages a layer must never import (STYLE.md).
FORBIDDEN_LIBS = {"models": {"rasterio"}, "io": {"torch"}, "config": {"torch", "xgboost"}}


def _layer(sub: str) -> int:
    for i, names in enumerate(LAYERS):
        if sub in names:
            return i
    raise AssertionError(f"lsm.{sub} is in no layer of tests/test_layering.py; add it")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(path: Path, name: str) -> list[tuple[str, int]]:
    """Absolute names of every module ``path`` imports, with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, node.lineno))
    return found


def _sub(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "lsm" and len(parts) > 1 else None


def test_every_import_points_down() -> None:
    bad = []
    for name, path in _modules():
        src = _sub(name)
        if src is None:  # lsm/__init__.py: the package's front door may import anything
            continue
        for mod, line in _imports(path, name):
            if mod == "lsm":  # the package itself (lsm.__version__)
                continue
            dst = _sub(mod)
            if dst is None or dst == src:
                continue
            if any(name.startswith(a) and mod == b for a, b in ALLOWED):
                continue
            if _layer(dst) >= _layer(src):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} imports {mod}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_module_imports_the_cli() -> None:
    bad = [f"{name} imports {mod}" for name, path in _modules() if name != "lsm.cli"
           for mod, _ in _imports(path, name) if mod == "lsm.cli" or mod.startswith("lsm.cli.")]
    assert not bad


@pytest.mark.parametrize("sub", sorted(FORBIDDEN_LIBS))
def test_forbidden_libraries(sub: str) -> None:
    bad = [f"{name} imports {mod}" for name, path in _modules() if _sub(name) == sub
           for mod, _ in _imports(path, name) if mod.split(".")[0] in FORBIDDEN_LIBS[sub]]
    assert not bad


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The parser finds lazy and relative imports (so the tests above can fail)."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from lsm.transfer import adapt\n    from ..transfer import x\n")
    assert [m for m, _ in _imports(f, "lsm.models.mod")] == ["lsm.transfer", "lsm.transfer"]
    assert _layer("models") < _layer("transfer")
