"""Which code each DVC stage runs, so that its ``deps`` can cover it.

A stage's code is its script plus every module of ``cxrbench`` the script imports, directly or through the
package, imports inside functions included (read from the source, nothing is run). ``missing`` names each
module file that no dep of the stage covers: a dep covers a file when it is that file or a folder above it.

    cxrbench deps            # prints every uncovered module, stage by stage; exit 1 if there is one
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from pathlib import Path

import yaml

PACKAGE = "cxrbench"


def module_file(root: Path, module: str) -> Path | None:
    """The file of a module of the package, or None where ``module`` is not one."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _package_of(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts)
    return ".".join(parts[:-1])


def imported_modules(root: Path, path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere in its body (absolute and relative imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    inside = path.is_relative_to(root / PACKAGE)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not inside:
                    continue
                base = _package_of(root, path).split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)   # `from pkg import module`
    return {m for m in found if m.split(".")[0] == PACKAGE}


def closure(root: Path, script: Path) -> set[Path]:
    """Every package file that running ``script`` can execute: the modules it imports, their parents'
    ``__init__.py`` files, and so on through the package."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for mod in imported_modules(root, path):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):          # importing a.b.c runs a/__init__ and a/b/__init__ too
                f = module_file(root, ".".join(parts[:i]))
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen


def stage_scripts(root: Path, dvc_yaml: dict) -> dict[str, tuple[Path, list[str]]]:
    """stage name -> (its Python script, its deps), from the ``cmd`` of each stage of dvc.yaml."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        words = shlex.split(body["cmd"])
        scripts = [w for w in words if w.endswith(".py")]
        if words[:2] == ["python", "-m"]:                  # python -m stages.NAME
            scripts = [str(Path(*words[2].split(".")).with_suffix(".py"))]
        if len(scripts) != 1:
            raise ValueError(f"dvc.yaml stage {name!r}: expected one Python script in its cmd, got {body['cmd']!r}")
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        out[name] = (root / scripts[0], deps)
    return out


def covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def missing(root: Path) -> dict[str, list[str]]:
    """stage -> the files of the code it runs that its deps do not cover (empty lists left out)."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    out = {}
    for name, (script, deps) in stage_scripts(root, dvc).items():
        files = [str(f.relative_to(root)) for f in closure(root, script)]
        files.append(str(script.relative_to(root)))
        gaps = sorted(f for f in files if not covered(f, deps))
        if gaps:
            out[name] = gaps
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench deps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="the repository (default: the current folder)")
    args = ap.parse_args(argv)
    gaps = missing(Path(args.root).resolve())
    for stage, files in gaps.items():
        print(f"{stage}: not in its deps: {', '.join(files)}")
    if not gaps:
        print("every stage's deps cover the code it runs")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
