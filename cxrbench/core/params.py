"""Read ``params.yaml`` and validate each section before any work starts.

Every check raises :class:`ParamError` naming the key, the bad value and what to
do, in the spirit of scikit-learn's argument validation.
"""

from __future__ import annotations

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


def load(path: str | Path = PARAMS_FILE, overrides: Mapping[str, Any] | None = None) -> dict:
    """params.yaml, then ``overrides`` (dotted keys, see :func:`with_overrides`), then the authors'
    protocol when ``cohort: paper`` (see :func:`apply_protocol`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage from the repository root")
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ParamError("<root>", f"{path} must hold a mapping of sections")
    return apply_protocol(with_overrides(params, overrides or {}))


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
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set preprocess.size=256")
        out[key.strip()] = yaml.safe_load(value)
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

def check_fraction(key: str, value: Any, *, open_low: bool = True, open_high: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(key, f"expected a number in (0, 1), got {value!r}")
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (low_ok and high_ok):
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise ParamError(key, f"expected a fraction in {lo}0, 1{hi}, got {value!r}")
    return float(value)


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
    if value not in choices:
        raise ParamError(key, f"unknown value {value!r}; valid values are {choices}")
    return value


def check_subset(key: str, values: Any, choices: Iterable[str]) -> list:
    choices = list(choices)
    if not isinstance(values, list) or not values:
        raise ParamError(key, f"expected a non-empty list drawn from {choices}, got {values!r}")
    bad = [v for v in values if v not in choices]
    if bad:
        raise ParamError(key, f"unknown value(s) {bad}; valid values are {choices}")
    return values


def check_nonempty_list(key: str, values: Any) -> list:
    if not isinstance(values, list) or not values:
        raise ParamError(key, f"expected a non-empty list, got {values!r}")
    return values
