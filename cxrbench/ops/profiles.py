"""Run the pipeline under a profile: params overrides kept in ``profiles/NAME.yaml``.

A profile is a flat mapping ``dotted.param.key: value``. It never edits the
committed params.yaml: it becomes ``dvc exp run --temp -S key=value ...``, a DVC
experiment run in a temporary copy of the repository, that ``dvc exp show`` and
``dvc exp diff`` compare like any other (``dvc exp apply NAME`` brings its
results into the workspace).

    cxrbench profiles show ci
    cxrbench profiles run sample               # the embedded demo
    cxrbench profiles run ci --workspace       # CI: results land in the workspace
    cxrbench profiles run mirror -- preprocess # extra args go to dvc exp run
    cxrbench profiles run sample --set preprocess.channels=[raw,clahe] --name clahe
    cxrbench profiles run sample --queue --set train.backbones=[resnet18,densenet121]

``--workspace`` runs in the workspace instead: DVC then rewrites params.yaml
with the profile's values (and drops its comments), so use it only in a
throwaway clone (CI), and ``git checkout params.yaml`` afterwards.

Relative mirror paths that lie outside the repository (``../shared/data``) are
made absolute, because ``--temp`` and queued experiments run in a copy of the
repository elsewhere.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cxrbench.core.params import ParamError, flatten, load, parse_overrides, section

PROFILE_DIR = Path("profiles")


def read_profile(name: str, root: Path = Path(".")) -> dict[str, Any]:
    path = root / PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        import difflib
        known = sorted(p.stem for p in (root / PROFILE_DIR).glob("*.yaml"))
        close = difflib.get_close_matches(name, known, n=3)
        raise FileNotFoundError(f"no profile {name!r} ({path})"
                                + (f"; did you mean {' or '.join(close)}?" if close else f"; profiles: {', '.join(known)}"))
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of dotted param keys to values")
    return flatten(raw)


def check_keys(overrides: dict[str, Any], params: dict, profile: str) -> None:
    for key in overrides:
        try:
            section(params, key)
        except ParamError as err:
            raise ParamError(key, f"profile {profile!r} overrides a key that params.yaml does not have") from err


def resolve_paths(overrides: dict[str, Any], root: Path) -> dict[str, Any]:
    """Mirror paths outside the repository become absolute; paths inside stay relative."""
    out = dict(overrides)
    root = root.resolve()
    for key, value in overrides.items():
        if key.endswith(".mirror") and isinstance(value, str) and not Path(value).is_absolute():
            target = (root / value).resolve()
            if not target.is_relative_to(root):
                out[key] = str(target)
    return out


INTERPOLATION = "${"


def check_literal(key: str, value: Any) -> None:
    """Refuse a value that DVC would not take literally: ``-S`` overrides go through Hydra and OmegaConf,
    which resolve ``${...}`` even inside a quoted string (``${oc.env:VAR}`` puts an environment variable
    into params.yaml, and the experiment commits it). No param needs one."""
    if isinstance(value, str) and INTERPOLATION in value:
        raise ParamError(key, f"{value!r} contains {INTERPOLATION!r}: DVC would resolve it as an interpolation "
                              f"(e.g. an environment variable) instead of taking it literally; write the value "
                              f"itself")
    if isinstance(value, list):
        for item in value:
            check_literal(key, item)
    if isinstance(value, dict):
        for k, item in value.items():
            check_literal(key, str(k))
            check_literal(key, item)


def _bare(value: str) -> bool:
    """Whether Hydra reads ``value`` unquoted as exactly this string (a name, a path): then it needs no quotes,
    and the command a user copies stays readable. Checked with Hydra's own parser, the one DVC uses."""
    if not value or INTERPOLATION in value or any(c in value for c in " '\"\\,[]{}()=:"):
        return False
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException
    except ImportError:    # without Hydra here, quote every string (DVC's own Hydra reads both)
        return False
    try:
        parsed = OverridesParser.create().parse_override(f"k={value}").value()
    except HydraException:   # not a bare value: written quoted
        return False
    return isinstance(parsed, str) and parsed == value


def hydra_value(value: Any) -> str:
    """A value in the override syntax of ``dvc exp run -S`` (Hydra's grammar); see :func:`check_literal`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and _bare(value):
        return value
    if isinstance(value, str):
        # Hydra's quoted strings: a backslash escapes only in a run of backslashes before a quote or the
        # closing quote (each pair is one); elsewhere it is literal. So double those runs and escape quotes.
        return "'" + re.sub(r"(\\*)('|\Z)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express {value!r} as a -S override")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items: the parser every stage script uses too (:func:`cxrbench.core.params.parse_overrides`)."""
    return parse_overrides(items)


def exp_command(name: str, overrides: dict[str, Any], extra: list[str], temp: bool, exp_name: str | None,
                queue: bool = False) -> list[str]:
    cmd = ["dvc", "exp", "run"]
    if queue:
        cmd.append("--queue")
    elif temp:
        cmd.append("--temp")
    if exp_name:
        cmd += ["--name", exp_name]
    for key, value in overrides.items():
        check_literal(key, value)
        cmd += ["-S", f"{key}={hydra_value(value)}"]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench profiles", description=__doc__,
                                 usage="%(prog)s {show,run} PROFILE [options] [-- dvc exp run arguments]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["show", "run"])
    ap.add_argument("profile")
    ap.add_argument("--workspace", action="store_true",
                    help="run in the workspace (rewrites params.yaml; for throwaway clones such as CI)")
    ap.add_argument("--name", help="experiment name (default: DVC's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more override on top of the profile (repeatable); it replaces the profile's value")
    ap.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []   # after --: dvc exp run's own arguments
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = ap.parse_args(argv)
    args.extra = extra
    try:
        return _run(args)
    except (ParamError, FileNotFoundError) as err:   # a bad profile name or value, a bad --set: one line
        print(f"cxrbench profiles: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    root = Path(".")
    overrides = {**read_profile(args.profile, root), **parse_sets(args.set)}
    overrides = resolve_paths(overrides, root)
    check_keys(overrides, load(), args.profile)
    cmd = exp_command(args.profile, overrides, args.extra, not args.workspace, args.name, args.queue)
    if args.action == "show":
        print(copyable(cmd))
        return 0
    print("+", " ".join(_quote(c) for c in cmd), flush=True)
    return run_with_progress(cmd, load(overrides=overrides))


def copyable(cmd: list[str]) -> str:
    """The command on several lines, one ``-S`` override a line, each quoted once for a POSIX shell."""
    lines, i = [], 0
    head = []
    while i < len(cmd) and cmd[i] != "-S":
        head.append(_quote(cmd[i]))
        i += 1
    lines.append(" ".join(head))
    while i < len(cmd):
        if cmd[i] == "-S" and i + 1 < len(cmd):
            lines.append(f"  -S {_quote(cmd[i + 1])}")
            i += 2
        else:
            lines.append("  " + _quote(cmd[i]))
            i += 1
    return " \\\n".join(lines)


def run_with_progress(cmd: list[str], params: dict) -> int:
    """Run ``cmd`` (dvc exp run), passing its output through, with a "stage k of N" line and the time left
    as DVC reaches each stage; the stage times are kept for the next run's estimate, and printed at the end
    as a table (:mod:`cxrbench.ops.times`; hottest steps from the timing records this run wrote here)."""
    import time

    from cxrbench.ops import progress as PR
    from cxrbench.ops import times as T

    started = time.time()
    prog = PR.Progress(PR.expected_stages(params), PR.previous_times())
    if cmd and cmd[0] == "dvc":              # DVC with the faster dvc.lock parse (cxrbench.ops._dvc)
        cmd = [sys.executable, "-m", "cxrbench.ops._dvc", *cmd[1:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        note = prog.feed(line)
        if note:
            print(note, flush=True)
    rc = proc.wait()
    prog.finish()
    if prog.times:
        print("\n[cxrbench] where the time went (cxrbench times; skipped stages take ~0 s):", flush=True)
        print(T.render(T.rows(T.load(newer_than=started), seen=prog.times)), flush=True)
    return rc


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


if __name__ == "__main__":
    sys.exit(main())
