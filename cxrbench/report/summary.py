"""What ran and what it found, on one screen: the summary that opens ``report/README.md`` and the one-page
offline ``report/index.html`` (every figure embedded, no script, no link that leaves the page).

The summary names the profile, the commit, the hardware and the n of images and patients; the headline
table with CIs (:mod:`cxrbench.core.headline`); the shortcut audit's figure; the explanation methods ranked
by their gain over the random-map control; and every status a reader must not miss: degenerate maps,
stages that wrote nothing (skipped), stages switched off, values not scored.
"""

from __future__ import annotations

import base64
import html
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cxrbench.core import headline as H
from cxrbench.core import paths, runtime
from cxrbench.core.io import read_json
from cxrbench.core.params import flatten

PROFILE_DIR = "profiles"
HTML = "index.html"


def _json(path: Path) -> Any | None:
    return read_json(path) if path.is_file() else None


def commit(root: Path) -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else "unknown (not a git checkout)"


def hardware() -> str:
    """The CPU model (:func:`cxrbench.core.runtime.cpu_model`) and cores, and the GPU when torch sees one."""
    out = f"{runtime.cpu_model()}, {os.cpu_count()} logical CPU(s), {platform.system()} {platform.machine()}"
    try:
        import torch
        if torch.cuda.is_available():
            out += f"; GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        out += "; torch not installed"
    return out


def profile_of(params: dict, root: Path) -> str:
    """The profile whose every override (sources aside: their mirror paths are made absolute for a run) has
    the value of ``params``; "none (params.yaml)" when no profile matches."""
    flat = flatten(params)
    matches = []
    for f in sorted((root / PROFILE_DIR).glob("*.yaml")):
        over = flatten(yaml.safe_load(f.read_text()) or {})
        keys = [k for k in over if not k.startswith("sources.")]
        if keys and all(k in flat and flat[k] == over[k] for k in keys):
            matches.append((len(keys), f.stem))
    return max(matches)[1] if matches else "none (params.yaml as committed, or a custom run)"


def facts(params: dict, root: Path) -> list[tuple[str, str]]:
    d = _json(root / paths.DATA_METRICS) or {}
    n = (f"{d['images']} images of {d['patients']} patients; {d['test_images']} held-out test images"
         if {"images", "patients", "test_images"} <= set(d) else f"unknown ({paths.DATA_METRICS} not found)")
    return [("profile", profile_of(params, root)), ("commit", commit(root)), ("hardware", hardware()),
            ("data", n)]


def _cell(v: Any) -> str:
    return H.cell(v, " (n={})")


def headline_rows(root: Path) -> list[tuple[str, str]]:
    return [(k, _cell(v)) for k, v in H.flatten(H.load(root)).items()]


def ranking(root: Path) -> list[tuple[str, str, str]]:
    """Methods by their AOPPC gain over the random map (pixel deletion, pooled), best first: (method, gain
    [CI], verdict against the control)."""
    h = (H.load(root).get("aoppc")) or {}
    rows = []
    for k, v in h.items():
        if not k.startswith("gain."):
            continue
        m = k[len("gain."):]
        if not isinstance(v, dict):
            rows.append((float("-inf"), m, "not scored", "no maps to score (degenerate or failed)"))
            continue
        verdict = ("beats the random map" if v.get("low", -1) > 0 else
                   "worse than the random map" if v.get("high", 1) < 0 else "not distinguishable from random")
        rows.append((v["value"], m, _cell(v), verdict))
    rows.sort(key=lambda r: -r[0])
    control = h.get("random")
    head = [("random map (control)", _cell(control), "the control: AOPPC of a uniform random map")] \
        if control is not None else []
    return head + [(m, c, verdict) for _, m, c, verdict in rows]


def statuses(root: Path) -> list[tuple[str, str]]:
    """Every status a reader must see: stages without output, stages off, values not scored, degenerate maps."""
    out = []
    heads = H.load(root)
    for stage in H.SPEC:
        if stage not in heads:
            out.append((stage, f"no output ({paths.headline(stage)} not found): the stage did not run"))
            continue
        h = heads[stage]
        if isinstance(h.get("status"), str) and h["status"] not in ("ok", "on"):
            out.append((stage, f"status: {h['status']}"))
        if h.get("not_scored"):
            out.append((stage, f"not scored: {', '.join(h['not_scored'])}"))
    for name, path in (("external", paths.EXTERNAL_METRICS), ("severity", paths.SEVERITY),
                       ("planted", paths.PLANTED)):
        d = _json(root / path)
        if d is None:
            out.append((name, f"no output ({path} not found)"))
        elif isinstance(d.get("status"), str) and d["status"] not in ("ok", "on"):
            out.append((name, f"status: {d['status']}" + (f" ({d['reason']})" if d.get("reason") else "")))
    a = _json(root / paths.AOPPC) or {}
    for m, c in ((a.get("maps") or {}).get("by_method") or {}).items():
        bad = {k: n for k, n in c.items() if k not in ("ok", "excluded_degenerate") and n}
        if bad:
            out.append(("aoppc", f"{m}: degenerate or failed maps " + ", ".join(f"{k} {n}" for k, n in bad.items())
                        + " (left out of its scores)"))
    return out or [("all stages", "ok: every stage wrote its output and every headline value was scored")]


def markdown(params: dict, root: Path) -> str:
    """The summary as the first screen of report/README.md."""
    def table(header, rows):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])
    out = ["## Summary of this run", "", table(["", ""], facts(params, root)), "",
           "### Headline metrics ([CI] over patients where the stage has one; `cxrbench show`)", "",
           table(["metric", "value"], headline_rows(root)) if headline_rows(root) else
           "*No headline metrics: run the pipeline (cxrbench run sample).*", "",
           "### Explanation methods against the random-map control (AOPPC gain, pixel deletion)", ""]
    r = ranking(root)
    out += [table(["method", "gain over random [CI]", "verdict"], r) if r else "*aoppc did not run.*", "",
            "### Status", "", table(["stage", "status"], statuses(root)), ""]
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="missing">{html.escape(alt)}: {html.escape(str(path))} not found (run its stage).</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _html_table(header: list[str], rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:left;
font-size:13px}th{background:#eee}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#444}
.missing{color:#a00}"""


def page(params: dict, root: Path, title: str) -> str:
    """report/index.html: the summary first, then every figure of the run, all embedded."""
    figures = [(paths.SHORTCUT_AUDIT_PLOT, "Shortcut audit: AUROC of every control with its CI (chance 0.5)")]
    more = [(paths.AOPPC_CURVES_PLOT, "Probability drop per perturbation level (MoRF), random map dashed"),
            (paths.RANDOMISATION_PLOT, "Cascading randomisation with the null reference"),
            (paths.PLANTED_RANKING_PLOT, "Planted tag: localisation vs AOPPC"),
            (paths.LABEL_DISTRIBUTION_PLOT, "Label distribution by split"),
            (paths.UNET_OVERLAYS_PLOT, "Lung U-Net on held-out images"),
            (paths.EXTERNAL_CALIBRATION_PLOT, "External validation: calibration")]
    attr = root / paths.ATTRIBUTION_PLOTS
    more += [(str(p.relative_to(root)), f"Attribution maps: {p.stem}") for p in sorted(attr.glob("*.png"))] \
        if attr.is_dir() else []
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary of this run</h2>", _html_table(["", ""], facts(params, root)),
             "<h2>Headline metrics</h2><p>[CI] over patients where the stage has one.</p>",
             _html_table(["metric", "value"], headline_rows(root)),
             _img(root / figures[0][0], figures[0][1]),
             ("<h2>Explanation methods against the random-map control</h2><p>AOPPC gain over a uniform random map "
              "(pixel deletion, most important first), pooled over models.</p>"),
             _html_table(["method", "gain over random [CI]", "verdict"], ranking(root)),
             "<h2>Status</h2>", _html_table(["stage", "status"], statuses(root)),
             "<h2>Figures</h2>", *(_img(root / p, alt) for p, alt in more if (root / p).is_file()),
             "<p>The full report with every table: README.md in this folder; the model card: model_card.md.</p>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
