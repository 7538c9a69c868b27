"""The headline table of a run (``cxrbench show``) and of two runs side by side (``cxrbench diff``).

A run is the workspace (``.``, the default), a DVC experiment by name, or any git revision: the
headline files (``metrics/headline/STAGE.json``, :mod:`cxrbench.core.headline`) are read from its commit.
Without an argument ``show`` reads the workspace, or the newest experiment when the workspace has none.

    cxrbench show                 # this workspace's headline (one screen)
    cxrbench show clahe           # the experiment named clahe
    cxrbench diff HEAD clahe      # the committed reference run against an experiment
    cxrbench diff HEAD clahe --changed   # only what moved

In the workspace, a headline file counts only when the workspace's ``dvc.lock`` records it (the same md5): a
file its stage has not written there (the committed reference's after a clone, or an older run's) is shown as
"not run", and with nothing recorded ``show`` falls back to the newest experiment. :func:`across_runs` lines up
the headline of several runs (training seeds: ``scripts/compare_seeds.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cxrbench.core import headline as H
from cxrbench.core import paths
from cxrbench.ops._dvc import LOCK_NAME

WORKSPACE = "."
NOT_RUN = "not run"


class RunNotFound(Exception):
    pass


def _git(*args: str, root: Path = Path(".")) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def resolve(rev: str, root: Path = Path(".")) -> str:
    """A git revision for ``rev``: an experiment's name (refs/exps/.../NAME) or any revision git knows."""
    refs = _git("for-each-ref", "--format=%(refname)", "refs/exps", root=root).stdout.split()
    named = [r for r in refs if r.rsplit("/", 1)[-1] == rev]
    if named:
        return named[0]
    if _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", root=root).returncode == 0:
        return rev
    import difflib
    names = [r.rsplit("/", 1)[-1] for r in refs]
    close = difflib.get_close_matches(rev, names, n=3)
    raise RunNotFound(f"no experiment or git revision named {rev!r}"
                      + (f"; did you mean {' or '.join(close)}?" if close else
                         f"; experiments: {', '.join(names) if names else 'none (dvc exp show lists them)'}"))


def newest_experiment(root: Path = Path(".")) -> str | None:
    out = _git("for-each-ref", "--sort=-committerdate", "--count=1", "--format=%(refname)", "refs/exps",
               root=root).stdout.strip()
    return out or None


def load(rev: str = WORKSPACE, root: Path = Path(".")) -> dict[str, dict]:
    """The headline files of a run, by stage."""
    if rev == WORKSPACE:
        return H.load(root)
    ref = resolve(rev, root)
    out = {}
    for stage in H.SPEC:
        r = _git("show", f"{ref}:{paths.headline(stage)}", root=root)
        if r.returncode == 0:
            out[stage] = json.loads(r.stdout)
    return out


def unrecorded(headlines: dict[str, dict], root: Path = Path(".")) -> list[str]:
    """The stages whose headline file under ``root`` is not the one ``root/dvc.lock`` records (another md5, or
    no entry): their stage has not written it in this workspace. Without a ``dvc.lock``, every stage."""
    lock_path = root / LOCK_NAME
    if not lock_path.is_file():
        return list(headlines)
    lock = yaml.load(lock_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    recorded = {o["path"]: o.get("md5") for st in (lock.get("stages") or {}).values() for o in st.get("outs", [])}
    md5 = lambda stage: hashlib.md5((root / paths.headline(stage)).read_bytes()).hexdigest()
    return [stage for stage in headlines if recorded.get(paths.headline(stage)) != md5(stage)]


def mark_not_run(headlines: dict[str, dict], stages: list[str]) -> dict[str, dict]:
    """The headlines with every value of ``stages`` replaced by :data:`NOT_RUN`."""
    return {stage: ({k: NOT_RUN for k in h if k != "not_scored"} if stage in stages else h)
            for stage, h in headlines.items()}


def load_workspace(root: Path = Path(".")) -> tuple[dict[str, dict], list[str]]:
    """The workspace's headlines with the files it has not written marked "not run" (:func:`unrecorded`), and
    those stages."""
    heads = H.load(root)
    stale = unrecorded(heads, root)
    return mark_not_run(heads, stale), stale


def cell(v: Any) -> str:
    return H.cell(v)


def _number(v: Any) -> float | None:
    if isinstance(v, dict):
        return v.get("value")
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def show_text(headlines: dict[str, dict], title: str) -> str:
    if not headlines:
        return (f"{title}: no headline metrics ({paths.HEADLINE}/*.json); run a profile first "
                f"(cxrbench run sample) or name an experiment (dvc exp show lists them)")
    rows = [[k, cell(v)] for k, v in H.flatten(headlines).items()]
    missing = sum(len(h.get("not_scored", [])) for h in headlines.values())
    note = f"\n{missing} value(s) not scored (a stage off, or a degenerate method)." if missing else ""
    return f"{title}: [CI] where the stage has one, n behind it\n\n" + table(rows, ["metric", "value"]) + note


def diff_text(a: dict[str, dict], b: dict[str, dict], name_a: str, name_b: str, changed: bool = False) -> str:
    """The two runs' headline side by side; ``changed``: only the values that differ (a value or its CI), with
    a line counting the others."""
    fa, fb = H.flatten(a), H.flatten(b)
    rows, same = [], 0
    for k in list(dict.fromkeys([*fa, *fb])):
        va, vb = fa.get(k), fb.get(k)
        if changed and cell(va) == cell(vb):
            same += 1
            continue
        na, nb = _number(va), _number(vb)
        change = f"{nb - na:+.3f}" if na is not None and nb is not None else ("" if cell(va) == cell(vb) else "changed")
        rows.append([k, cell(va), cell(vb), change])
    if changed and not rows:
        return f"{name_a} and {name_b}: all {same} headline values are equal"
    text = table(rows, ["metric", name_a, name_b, "change"])
    return text + (f"\n{same} other value(s) equal (cxrbench diff without --changed shows them)" if changed else "")


def across_runs(flats: dict[str, dict[str, Any]]) -> list[dict]:
    """The same headline values of several runs (``run label -> flatten(...)``), a row per value: each run's
    value, the spread (largest minus smallest) and whether two runs' intervals are ``apart`` (they do not
    overlap: one run lies outside what another's interval claimed). ``apart`` is None where some run has no
    interval for the value; a value that is not a number in some run (a status, not scored) gets no spread."""
    rows = []
    for key in dict.fromkeys(k for f in flats.values() for k in f):
        vals = {run: f.get(key) for run, f in flats.items()}
        nums = [_number(v) for v in vals.values()]
        spread = max(nums) - min(nums) if all(n is not None for n in nums) else None
        cis = [v for v in vals.values() if isinstance(v, dict) and "low" in v]
        apart = (max(v["low"] for v in cis) > min(v["high"] for v in cis)) if len(cis) == len(vals) else None
        rows.append({"key": key, "runs": vals, "spread": spread, "apart": apart})
    return rows


def main(argv: list[str] | None = None, command: str = "show") -> int:
    ap = argparse.ArgumentParser(prog=f"cxrbench {command}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if command == "show":
        ap.add_argument("run", nargs="?", help="an experiment name or git revision (default: the workspace)")
    else:
        ap.add_argument("a", help="a run: experiment name, git revision, or . for the workspace")
        ap.add_argument("b", nargs="?", default=WORKSPACE, help="the other run (default: the workspace)")
        ap.add_argument("--changed", action="store_true", help="only the values that differ between the two runs")
    args = ap.parse_args(argv)
    try:
        if command == "show":
            rev = args.run or WORKSPACE
            runs, stale = load_workspace() if rev == WORKSPACE else (load(rev), [])
            if args.run is None and len(stale) == len(runs) and newest_experiment():
                rev, stale = newest_experiment().rsplit("/", 1)[-1], []    # nothing run in the workspace
                runs = load(rev)
            print(show_text(runs, "workspace" if rev == WORKSPACE else rev) + _stale_note(stale))
            return 0
        a, stale_a = load_workspace() if args.a == WORKSPACE else (load(args.a), [])
        b, stale_b = load_workspace() if args.b == WORKSPACE else (load(args.b), [])
        print(diff_text(a, b, args.a, args.b, changed=args.changed) + _stale_note(stale_a or stale_b))
        return 0
    except RunNotFound as err:
        print(f"cxrbench {command}: {err}", file=sys.stderr)
        return 2


def _stale_note(stale: list[str]) -> str:
    if not stale:
        return ""
    return (f"\n{NOT_RUN}: {', '.join(stale)}: the workspace's dvc.lock does not record these headline files (the "
            f"committed reference's, or an older run's); run the stages, or read the reference with cxrbench show HEAD")


def diff_main(argv: list[str] | None = None) -> int:
    return main(argv, "diff")


if __name__ == "__main__":
    sys.exit(main())
