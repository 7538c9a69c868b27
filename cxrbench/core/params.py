"""Read ``params.yaml`` and validate each section before any work starts.

Every check raises :class:`ParamError` naming the key, the bad value and what to
do, in the spirit of scikit-learn's argument validation.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

PARAMS_FILE = "params.yaml"


class ParamError(ValueError):
    """An invalid value in params.yaml; the message names the key and the fix."""

    def __init__(self, key: str, message: str):
        super().__init__(f"params.yaml: `{key}`: {message}")
        self.key = key


COHORTS = ("rebuilt", "paper")
PROTOCOLS = ("paper", "corrected")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e-06`` as a float (YAML 1.2). PyYAML follows YAML 1.1, where a
    float needs a dot, so ``1e-06`` stays a string; DVC writes a profile's small floats that way into
    params.yaml (``dvc exp run -S train.schedule.min_lr=...``), and a stage then refused the string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+$"),      # digits and an exponent, no dot
    list("-+0123456789"))


def load(path: str | Path = PARAMS_FILE, overrides: Mapping[str, Any] | None = None) -> dict:
    """params.yaml, then ``overrides`` (dotted keys, see :func:`with_overrides`), then the authors'
    protocol when ``cohort: paper`` (see :func:`apply_protocol`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage from the repository root")
    with open(path, encoding="utf-8") as f:
        params = yaml.load(f, Loader=_Loader)      # noqa: S506 (a SafeLoader)
    if not isinstance(params, dict):
        raise ParamError("<root>", f"{path} must hold a mapping of sections")
    params = apply_protocol(with_overrides(params, overrides or {}))
    check_finite_tree(params)
    return params


def check_finite_tree(node: Any, key: str = "") -> None:
    """Every number in ``node`` (params, nested mappings and lists) must be finite: no param means
    anything by NaN or infinity, and one that slipped past a validator would poison every result."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            check_finite_tree(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_finite_tree(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ParamError(key, f"expected a finite number, got {node!r}; write the value itself")


# --- overrides: one parser for stage scripts and profiles -------------------------

def flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a.b': {'c': 1}}`` -> ``{'a.b.c': 1}``: one leaf per key (DVC's -S sets one leaf at a time)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` items (dotted keys, YAML values: ``[raw,clahe]`` is a list, ``null`` is None), flattened."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"--set {item}", "expected KEY=VALUE, e.g. --set preprocess.size=256")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ParamError(key.strip(), f"--set value {value!r} is not a YAML value ({err.problem})") from err
    return flatten(out)


def with_overrides(params: dict, overrides: Mapping[str, Any] | Iterable[str]) -> dict:
    """A copy of ``params`` with dotted-key overrides (a mapping, or ``KEY=VALUE`` strings); each key must exist."""
    import copy

    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    out = copy.deepcopy(params)
    for key, value in flatten(overrides).items():
        section(out, key)  # must exist: a misspelt key is an error naming it
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def add_stage_arguments(ap) -> None:
    """``--params FILE`` and ``--set KEY=VALUE`` (repeatable): every stage script takes them, for running a
    stage by hand under other values (dvc.yaml passes neither: DVC reads params.yaml)."""
    ap.add_argument("--params", default=PARAMS_FILE, help="params file (default params.yaml, as DVC uses)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key for this run, e.g. --set unet.epochs=3 (repeatable)")


def from_arguments(args) -> dict:
    """The params of a stage script parsed with :func:`add_stage_arguments`."""
    return load(args.params, parse_overrides(args.set))


def run_stage(main, argv: list[str] | None = None) -> None:
    """Run a stage script's ``main`` (its ``__main__`` line calls this): an invalid param (:class:`ParamError`)
    or an input JSON that does not parse ends the stage with that one message, naming the key or the file,
    and exit status 2, as argparse does for a bad argument, instead of a traceback. Other errors propagate.
    A stage that DVC runs and that ends well writes its timing record (:mod:`cxrbench.core.timing`)."""
    from cxrbench.core import timing
    from cxrbench.core.io import BadJSONError

    timing.main_started()
    try:
        main(argv)
    except (ParamError, BadJSONError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    timing.write()          # run by DVC: timing/STAGE.json (wall time, start-up, hottest steps)


def stage_params(description: str | None, argv: list[str] | None = None) -> dict:
    """For a stage script without arguments of its own: parse ``--params`` / ``--set`` and load."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    add_stage_arguments(ap)
    return from_arguments(ap.parse_args(argv))


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in (over or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_protocol(params: dict) -> dict:
    """``cohort: paper``: merge ``paper_protocol.common`` and then ``paper_protocol.<protocol>`` over the params.

    The authors' settings (their seed, batch, intensity range, threshold…) are
    facts of params.yaml like any other; this only says when they apply. A
    profile that must shorten a paper run sets e.g. ``paper_protocol.common.train.epochs``.
    """
    cohort = params.get("cohort", "rebuilt")
    check_choice("cohort", cohort, COHORTS)
    protocol = params.get("protocol", "corrected")
    check_choice("protocol", protocol, PROTOCOLS)
    if cohort != "paper":
        return params
    pp = section(params, "paper_protocol")
    for key in ("common", protocol):
        if not isinstance(pp.get(key) or {}, dict):
            raise ParamError(f"paper_protocol.{key}", "expected a mapping of params sections to override")
    return deep_merge(deep_merge(params, pp.get("common") or {}), pp.get(protocol) or {})


def section(params: Mapping, key: str) -> Any:
    """``params['a']['b']`` for key ``'a.b'``, with an error naming the missing key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamError(key, "missing; add it to params.yaml (see the README for its meaning)")
        node = node[part]
    return node


# --- small checks -----------------------------------------------------------

def check_float(key: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                open_low: bool = False, open_high: bool = False, what: str = "a number") -> float:
    """A finite number (not a bool, string, list or mapping) within [minimum, maximum] (open ends on request);
    ``what`` names it in the message (e.g. "a standard deviation", "a fraction of the image side")."""
    lo = "(-inf" if minimum is None else f"{'(' if open_low else '['}{minimum:g}"
    hi = "inf)" if maximum is None else f"{maximum:g}{')' if open_high else ']'}"
    expected = f"{what} in {lo}, {hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(key, f"expected {expected}, got {value!r}")
    if not math.isfinite(value):
        raise ParamError(key, f"expected a finite number ({expected}), got {value!r}")
    low_ok = minimum is None or (value > minimum if open_low else value >= minimum)
    high_ok = maximum is None or (value < maximum if open_high else value <= maximum)
    if not (low_ok and high_ok):
        raise ParamError(key, f"expected {expected}, got {value!r}")
    return float(value)


def check_fraction(key: str, value: Any, *, open_low: bool = True, open_high: bool = True) -> float:
    return check_float(key, value, minimum=0, maximum=1, open_low=open_low, open_high=open_high, what="a fraction")


def check_int(key: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ParamError(key, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ParamError(key, f"must be <= {maximum}, got {value}")
    return value


def check_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if isinstance(value, (list, dict)) or value not in choices:
        raise ParamError(key, f"unknown value {value!r}; valid values are {choices}")
    return value


def check_subset(key: str, values: Any, choices: Iterable[str]) -> list:
    choices = list(choices)
    if not isinstance(values, list) or not values:
        raise ParamError(key, f"expected a non-empty list drawn from {choices}, got {values!r}")
    bad = [v for v in values if isinstance(v, (list, dict)) or v not in choices]
    if bad:
        raise ParamError(key, f"unknown value(s) {bad}; valid values are {choices}")
    return values


def check_names(key: str, values: Any, *, unique: bool = True) -> list[str]:
    """A non-empty list of strings (without repeats when ``unique``)."""
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ParamError(key, f"expected a non-empty list of names, got {values!r}")
    if unique and len(set(values)) != len(values):
        raise ParamError(key, f"lists a name twice: {values}")
    return values


def check_nonempty_list(key: str, values: Any) -> list:
    if not isinstance(values, list) or not values:
        raise ParamError(key, f"expected a non-empty list, got {values!r}")
    return values


SEED_POOL_IGNORED = ("gate",)


def seed_runs_problem(runs: list[tuple[str, dict]]) -> str | None:
    """None when the runs' params (``(run folder, params)`` each) differ in ``train.seed`` alone and no two
    share a seed, so that they may be pooled as training seeds of one study; else why not, in a sentence
    naming the run and the differing sections. ``SEED_POOL_IGNORED`` sections (the CI gate's checks and
    baselines: they judge a run, they compute nothing in it) may differ."""
    seeds = [p.get("train", {}).get("seed") for _, p in runs]
    if len(set(map(str, seeds))) < len(seeds):
        return (f"train.seed {seeds}: two runs share a seed (a rerun, not another seed); run the profile "
                f"with --set train.seed=N for each seed")

    def without_seed(p: dict) -> dict:
        q = {k: v for k, v in p.items() if k not in SEED_POOL_IGNORED}
        q["train"] = {k: v for k, v in (p.get("train") or {}).items() if k != "seed"}
        return q

    first_dir, first = runs[0]
    base = without_seed(first)
    for run_dir, p in runs[1:]:
        other = without_seed(p)
        diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if diff:
            return (f"{run_dir}: its params differ from {first_dir}'s in {diff}, not only in train.seed; "
                    f"pool only runs of one profile that differ in the training seed")
    return None


def load_seed_runs(run_dirs: list[Path], needed: list[str], after: str,
                   one_run: str | None = None) -> list[tuple[Path, dict]]:
    """Each run folder with its params, for pooling runs of one profile over training seeds: every folder must
    hold ``needed`` (paths relative to it) and two or more runs must differ in ``train.seed`` alone
    (:func:`seed_runs_problem`). Raises ValueError saying what is missing (``after``: the stage the runs must
    have finished) or why the runs are not seeds of one study; ``one_run``: the message for a single run where
    two or more are needed (None: one run is allowed)."""
    if one_run is not None and len(run_dirs) < 2:
        raise ValueError(one_run)
    runs = []
    for run_dir in map(Path, run_dirs):
        missing = [str(run_dir / f) for f in [PARAMS_FILE, *needed] if not (run_dir / f).exists()]
        if missing:
            raise ValueError(f"{', '.join(missing)}: not found; each RUN_DIR must be a run's root after its "
                             f"{after} finished")
        runs.append((run_dir, load(run_dir / PARAMS_FILE)))
    problem = seed_runs_problem([(str(d), p) for d, p in runs]) if len(runs) > 1 else None
    if problem:
        raise ValueError(problem)
    return runs
