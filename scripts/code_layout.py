"""Write docs/code-layout.md from the docstrings of the package, the stage scripts and these scripts.

    python scripts/code_layout.py           # rewrite the page
    python scripts/code_layout.py --check   # exit 1 if the committed page is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "code-layout.md"
LAYERS = ["core", "data", "lungs", "classify", "explain", "studies", "report", "ops"]

HEAD = """# Code layout

```
params.yaml        every fact and knob          dvc.yaml     the pipeline (no logic)
profiles/          param overrides per run      stages/      one thin script per stage
cxrbench/          the library                  tests/       pytest suite, one folder per subpackage
benchmarks/        scripts that print figures   scripts/     maintenance (make_sample.py, ...)
data/sample/       embedded real sample         .ci/run      what CI runs
baselines/         the gate's baseline, spread  results/     committed measured results
```

This page is written by `python scripts/code_layout.py` from the docstrings; a test keeps it current.

## The package

Subpackages import only from themselves or from those above them in this list: `core` <- `data` <-
`lungs` <- `classify` <- `explain` (with `methods/` and `metrics/`) <- `studies` <- `report` <- `ops`.
Stage scripts in `stages/` sit above everything: each parses its arguments, makes one package call and
writes its outputs. `cxrbench/core/paths.py` names every pipeline path; `dvc.yaml` is the only other place
that spells them. Each stage's `deps` in `dvc.yaml` list the package folders it runs, and `cxrbench deps`
checks that they cover the code each stage imports. Tests mirror the package: `tests/<subpackage>/`.
"""

TAIL_PACKAGE = """`cxrbench/cli.py` is the `cxrbench` command (`python3 -m cxrbench` is the same); `cxrbench --help`
lists its subcommands, `cxrbench SUBCOMMAND --help` each one's arguments.
"""


def first_paragraph(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def folder_section(folder: Path) -> list[str]:
    rel = folder.relative_to(ROOT).as_posix()
    out = [f"### `{rel}/`: {first_paragraph(folder / '__init__.py')}", "", "| module | what it is for |", "|---|---|"]
    for f in sorted(folder.glob("*.py")):
        if f.name != "__init__.py":
            out.append(f"| `{f.name}` | {first_paragraph(f)} |")
    for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
        out.append(f"| `{sub.name}/` | {first_paragraph(sub / '__init__.py')} (below) |")
    out.append("")
    for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
        out += folder_section(sub)
    return out


def script_table(folder: Path, heading: str, column: str) -> list[str]:
    out = [heading, "", f"| script | {column} |", "|---|---|"]
    out += [f"| `{f.name}` | {first_paragraph(f)} |" for f in sorted(folder.glob("*.py")) if f.name != "__init__.py"]
    return out + [""]


def page() -> str:
    lines = [HEAD]
    for layer in LAYERS:
        lines += folder_section(ROOT / "cxrbench" / layer)
    lines.append(TAIL_PACKAGE)
    lines += script_table(ROOT / "stages", "## Stage scripts (`stages/`)", "stage")
    lines += ["Every stage script also runs by hand with `--params FILE` and `--set KEY=VALUE`",
              "([running.md](running.md#knobs-of-the-machine)).", ""]
    lines += script_table(ROOT / "scripts", "## Scripts (`scripts/`)", "what it is for")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is out of date")
    args = ap.parse_args(argv)
    text = page()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run `python scripts/code_layout.py`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
