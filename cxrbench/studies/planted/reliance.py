"""Does the model use the planted tag? Its probability as tagged, with the tag removed and moved.

:func:`reliance`: the classifier's probability of the tagged label on the test images as they are (the
plan's tags), with every tag removed, and with the tag moved onto every non-target
image (:func:`cxrbench.data.confounder.move`'s default). Reliance is shown when
removing the tag lowers the target images' probability *and* adding it
raises the other images' (both CIs above 0).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cxrbench.core.bootstrap import DEFAULT_METHOD, DEFAULT_MIN_VALID, auroc_statistic, paired_ci
from cxrbench.studies.planted.common import (CHANCE, CONDITIONS, _ci_low_above_zero, _ci_or_status, _ci_text,
                                             _clean, _conf_text, _method_of, _n_groups, _vector, _weights)


def reliance(probs: Mapping[str, Any], *, target: Any, tagged: Any, moved: Any, groups: Any, n_boot: int,
             seed: int, confidence: float = 0.95, method: str = DEFAULT_METHOD,
             min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    """Whether a classifier uses the planted tag: its probability with the tag as planned, removed and moved.

    ``probs``: ``{"as_is", "removed", "moved"}`` -> (N,) P(tagged label), one
    per test image in one order; ``target`` (N,) the image has the tagged
    label; ``tagged`` (N,) it carries the tag in the plan; ``moved`` (N,) it
    carries it in the moved plan; ``groups`` (N,) patient ids. ``n_boot``, ``seed``, ``confidence``,
    ``method``, ``min_valid_share``: the intervals' settings (``stats.*``).

    Returns a JSON-able dict:

    * ``target_drop``: mean ``p_as_is - p_removed`` over tagged target images, CI over groups;
    * ``other_rise``: mean ``p_moved - p_as_is`` over non-target images untagged in the plan and tagged in
      the moved plan;
    * ``auroc``: per condition the AUROC of ``p`` for ``target`` over all images; ``auroc_change``: removed
      and moved minus as-is, paired on the same resamples;
    * ``chance``: 0.5 for AUROC, 0 for a shift; ``reliance_shown``: both shifts' CI lows above 0;
    * ``status``: ``ok``, or the parts' problems (``no_tagged_targets``, ``no_moved_others``,
      ``too_few_groups``, ``one_class``) joined by ``, ``; each part has its own ``status``.
    """
    if not isinstance(probs, Mapping) or set(probs) != set(CONDITIONS):
        got = sorted(probs) if isinstance(probs, Mapping) else type(probs).__name__
        raise ValueError(f"probs: expected a dict with exactly the keys {list(CONDITIONS)}, got {got}")
    n = len(np.asarray(probs["as_is"]).reshape(-1))
    p = {c: _vector(f"probs[{c!r}]", probs[c], n, "prob") for c in CONDITIONS}
    target = _vector("target", target, n, "bool")
    tagged = _vector("tagged", tagged, n, "bool")
    moved = _vector("moved", moved, n, "bool")
    groups = _vector("groups", groups, n, "any")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a bootstrap interval (stats.resamples)")

    def shift(mask: np.ndarray, a: str, b: str, empty: str) -> dict:
        d = (p[a] - p[b])[mask]
        out = _ci_or_status(lambda idx: float(d[idx].mean()), groups[mask], n_boot, seed, confidence, empty,
                            method, min_valid_share)
        out["definition"] = f"mean(p_{a} - p_{b})"
        return out

    drop = shift(target & tagged, "as_is", "removed", "no_tagged_targets")
    rise = shift(~target & ~tagged & moved, "moved", "as_is", "no_moved_others")

    auc, change = {}, {}
    if target.all() or not target.any():
        for c in CONDITIONS:
            auc[c] = {"status": "one_class", "estimate": None, "low": None, "high": None, "n": n,
                      "groups": _n_groups(groups)}
        for c in CONDITIONS[1:]:
            change[c] = dict(auc[c])
    else:
        stat = {c: (lambda s: (lambda idx: s(_weights(idx, n))))(auroc_statistic(target, p[c])) for c in CONDITIONS}
        for c in CONDITIONS:
            auc[c] = _ci_or_status(stat[c], groups, n_boot, seed, confidence, "no_images", method, min_valid_share)
        for c in CONDITIONS[1:]:
            if auc[c]["status"] != "ok":
                change[c] = dict(auc[c])
            else:
                ci = paired_ci(stat[c], stat["as_is"], groups, n_boot=n_boot, seed=seed, confidence=confidence,
                               method=method, min_valid_share=min_valid_share)
                change[c] = _clean({"status": "ok", **ci, "n": n, "definition": f"AUROC {c} - AUROC as_is"})

    problems = []
    for part in (drop, rise, *auc.values()):
        if part["status"] != "ok" and part["status"] not in problems:
            problems.append(part["status"])
    return _clean({"target_drop": drop, "other_rise": rise, "auroc": auc, "auroc_change": change,
                   "chance": dict(CHANCE), "reliance_shown": _ci_low_above_zero(drop) and _ci_low_above_zero(rise),
                   "status": ", ".join(problems) if problems else "ok", "n_images": n,
                   "n_groups": _n_groups(groups), "confidence": confidence, "n_boot": n_boot})


def _n_text(ci: dict) -> str:
    return f"{ci.get('n', 0)} / {ci.get('groups', 0)}"


def reliance_table(results: Mapping[str, dict]) -> str:
    """Markdown: one row per model (``resnet18``, ``resnet18-f0``, ...) of :func:`reliance` results."""
    if not results:
        raise ValueError("results: no model to tabulate (expected {model name: reliance(...) dict})")
    head = ("| model | target drop [CI] | n / groups | other rise [CI] | n / groups | AUROC as is | "
            "AUROC removed | AUROC moved | Δ removed | Δ moved | reliance shown |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    conf, n_boot, how = None, None, None
    for name, r in results.items():
        conf, n_boot = r.get("confidence", conf), r.get("n_boot", n_boot)
        how = how or _method_of([r["target_drop"], r["other_rise"], *r["auroc"].values(),
                                 *r["auroc_change"].values()])
        shown = "yes" if r["reliance_shown"] else "no"
        if r.get("status", "ok") != "ok":
            shown += f" ({r['status']})"
        lines.append(" | ".join([
            f"| {name}", _ci_text(r["target_drop"], True), _n_text(r["target_drop"]),
            _ci_text(r["other_rise"], True), _n_text(r["other_rise"]),
            *(_ci_text(r["auroc"][c]) for c in CONDITIONS),
            *(_ci_text(r["auroc_change"][c], True) for c in CONDITIONS[1:]), shown]) + " |")
    lines += ["", f"Target drop: mean P(label) as is minus tag removed, over tagged target images; other rise: "
                  f"tag moved minus as is, over untagged non-target images that get the tag when moved. n / groups: "
                  f"images / patient groups. Chance: shift {CHANCE['shift']:g}, AUROC {CHANCE['auroc']:g}. "
                  f"Reliance shown: both shifts' CI lows above 0. CI: {_conf_text(conf, n_boot, how)}."]
    return "\n".join(lines)
