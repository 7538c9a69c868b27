"""The ablation ladder's rows (``params.yaml: ablation``): validation, resolution into full overrides,
and what each data stage of a row depends on. Run and tabulated by :mod:`cxrbench.ops.ablation`."""

from __future__ import annotations

import hashlib
import json

from cxrbench.core.params import ParamError, apply_protocol, check_int, check_nonempty_list, flatten, section, with_overrides

ROW_KEYS = {"name", "change", "set", "from"}


def ladder(params: dict) -> list[dict]:
    """``ablation.rows`` resolved: each row with ``name``, ``change``, ``from`` (the row it differs from;
    None for the first), ``set`` (its own overrides) and ``overrides`` (the whole chain's)."""
    raw = section(params, "ablation.rows")
    if not isinstance(raw, list) or len(raw) < 2:
        raise ParamError("ablation.rows", "expected a list of at least two rows {name, change, set, from?}")
    rows, by_name = [], {}
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or set(r) - ROW_KEYS or not {"name", "change", "set"} <= set(r):
            raise ParamError(f"ablation.rows[{i}]", f"expected keys name, change, set (and optional from), got {r!r}")
        name = r["name"]
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or name in by_name:
            raise ParamError(f"ablation.rows[{i}].name", f"expected a unique identifier, got {name!r}")
        sets = flatten(r["set"] or {})
        for key in sets:
            section(params, key)                       # a misspelt key fails here, naming it
        base = r.get("from", rows[-1]["name"] if rows else None)
        if i and (not isinstance(base, str) or base not in by_name):
            raise ParamError(f"ablation.rows[{i}].from", f"{base!r} is not a row above {name!r}")
        overrides = {**(by_name[base]["overrides"] if base else {}), **sets}
        row = {"name": name, "change": str(r["change"]), "from": base, "set": sets, "overrides": overrides}
        rows.append(row)
        by_name[name] = row
    return rows


def validate(params: dict) -> dict:
    p = section(params, "ablation")
    if not isinstance(p.get("profile"), str):
        raise ParamError("ablation.profile", "expected the name of a profile (profiles/NAME.yaml), e.g. ci")
    if not isinstance(p.get("backbone"), str):
        raise ParamError("ablation.backbone", "expected one backbone name of train.known_backbones")
    check_nonempty_list("ablation.folds", p.get("folds"))
    for k in p["folds"]:
        check_int("ablation.folds", k, minimum=0)
    for key in flatten(p.get("set") or {}):
        section(params, key)
    ladder(params)
    return p


def row_params(base: dict, profile: dict, ablation: dict, row: dict) -> dict:
    """The params.yaml of one row: params.yaml, then the profile, the ladder's common set, the row's chain."""
    common = {**flatten(ablation.get("set") or {}), "train.backbones": [ablation["backbone"]],
              "train.folds": list(ablation["folds"])}
    return with_overrides(base, {**profile, **common, **row["overrides"]})


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(params: dict) -> dict[str, str]:
    """What each data stage's output depends on, as a digest of the merged params (protocol applied)."""
    m = apply_protocol(params)
    rules = m.get("paper_rules") if m["cohort"] == "paper" else None
    index = _digest(m["cohort"], (rules or {}).get("labels"), m["index"], m["dedupe"], m["labels"], m["sources"])
    return {"index": index,
            "split": _digest(index, m["split"], rules, m["paper_protocol"]["val_fraction"] if rules else None),
            "preprocess": _digest(index, m["preprocess"])}
