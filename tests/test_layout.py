"""The package's shape: subpackages import only downwards, modules and stage scripts stay small, stages are
callable, and nothing patches sys.path. Read from the syntax tree, so that a move of code never breaks it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxrbench.ops import deps as D

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cxrbench"
# lowest first: a subpackage may import from itself and from those before it
LAYERS = ["core", "data", "lungs", "classify", "explain", "studies", "report", "ops"]
MAX_MODULE_LINES, MAX_STAGE_LINES = 600, 100


def _layer(path: Path) -> int:
    rel = path.relative_to(PACKAGE).parts
    return LAYERS.index(rel[0]) if len(rel) > 1 else len(LAYERS)     # cxrbench/cli.py etc. sit on top


def _python_files() -> list[Path]:
    return [p for d in ("cxrbench", "stages", "tests", "scripts", "benchmarks") for p in (ROOT / d).rglob("*.py")]


def test_subpackages_import_only_downwards():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        for mod in D.imported_modules(ROOT, path):
            target = D.module_file(ROOT, mod)
            if target is None or target.parent == PACKAGE:
                continue
            if _layer(target) > _layer(path):
                wrong.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_every_subpackage_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree)
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        if init.parent == PACKAGE:
            continue
        names = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                      and any(getattr(t, "id", None) == "__all__" for t in n.targets)), None)
        assert names is not None, f"{init.relative_to(ROOT)} has no __all__"
        here = {p.stem for p in init.parent.glob("*.py") if not p.stem.startswith("_")} - {"__init__"}
        here |= {p.name for p in init.parent.iterdir() if (p / "__init__.py").is_file()}
        assert set(names) == here, f"{init.relative_to(ROOT)}: __all__ {sorted(names)}, modules {sorted(here)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_too_long(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"), ids=lambda p: p.name)
def test_stage_scripts_are_thin_and_callable(path):
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) <= MAX_STAGE_LINES
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    assert main is not None, f"{path.name} has no main()"
    args = main.args
    assert [a.arg for a in args.args] == ["argv"] and len(args.defaults) == 1, \
        f"{path.name}: main must take argv=None, so that it can be called with arguments"


def test_nothing_patches_sys_path():
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                found.append(str(path.relative_to(ROOT)))
    assert not found, f"sys.path is touched in {sorted(set(found))}: install the package (pip install -e .) instead"


def test_the_code_layout_page_is_current():
    """docs/code-layout.md is written from the docstrings: a moved or new module shows up there."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "code_layout.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_no_function_hides_the_paths_module():
    """A function that binds a local ``paths`` (an argument or an assignment) and also reads a pipeline path
    from the module ``cxrbench.core.paths`` fails with UnboundLocalError the first time it runs."""
    from cxrbench.core import paths as module

    names = {n for n in vars(module) if not n.startswith("_")}
    found = []
    for path in _python_files():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            binds = "paths" in [a.arg for a in fn.args.args + fn.args.kwonlyargs] or any(
                isinstance(n, ast.Name) and n.id == "paths" and isinstance(n.ctx, ast.Store) for n in ast.walk(fn))
            reads = any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "paths"
                        and n.attr in names and n.attr.isupper() | (n.attr in ("run", "attributions")) for n in ast.walk(fn))
            if binds and reads:
                found.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}")
    assert not found, f"rename the local `paths` in {found}"


def test_no_exception_is_silently_passed():
    """No ``except ...: pass`` in the package, the stages, the scripts or the benchmarks: an error is handled
    (a fallback that says so, a status that is counted) or it propagates."""
    silent = []
    for folder in ("cxrbench", "stages", "scripts", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ExceptHandler) and all(isinstance(b, ast.Pass) for b in node.body):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not silent, f"except ...: pass at {silent}"
