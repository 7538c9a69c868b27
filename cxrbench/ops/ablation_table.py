"""``results/ablation.{md,json}`` from the rows that ``cxrbench ablation run`` finished.

Every row is scored three ways on each fold's test images:

* **micro F1, the paper's scoring**: their 14 labels by their rule from each
  image's finding, ``prob > 0.51`` (:mod:`cxrbench.classify.paper_scoring`), whatever the
  row trained on: the same yardstick for every row;
* **micro F1, the row's own scoring**: the row's labels, cuts and ``>=``/``>``
  (what that protocol would report);
* **micro AUROC** on their labels that the model has an output for
  (threshold-free).

The value is the mean over folds. Its CI resamples patient groups with one draw
per resample shared by every fold (:func:`cxrbench.core.bootstrap.fold_mean_ci`):
the authors' five test sets share a third or more of their patients, which move
together. Test sampling only.
The change from the row it starts from has a paired bootstrap CI (the same
groups drawn for both rows) and, where both rows use the authors' folds, a
Nadeau-Bengio corrected resampled t interval over the 5 fold differences, which
also covers training variation (4 degrees of freedom: wide). ``fold sd`` is the
spread over folds (training variation plus, for the authors' folds, their
different test sets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cxrbench.core import bootstrap as B
from cxrbench.classify import paper_scoring as PS
from cxrbench.classify.evaluation import positive
from cxrbench.core.io import read_json, write_json, write_text
from cxrbench.data.labels import scored_outputs
from cxrbench.ops.ladder import ladder, row_params, validate
from cxrbench.core.params import apply_protocol, section

METRICS = {"paper_f1": "micro F1, paper scoring (their 14 labels, their cut)",
           "own_f1": "micro F1, the row's own scoring",
           "auroc": "micro AUROC (their labels)"}


def _labels(pred: pd.DataFrame) -> list[str]:
    return scored_outputs(pred)


def fold_arrays(row_dir: Path, fold: int, images: pd.DataFrame) -> dict:
    """One fold's test arrays of a row: groups, paper truth/probabilities, own truth/decisions."""
    d = row_dir / f"f{fold}"
    pred = pd.read_csv(d / "predictions.csv", keep_default_na=False)
    ev = read_json(d / "eval.json")
    test = pred[pred["split"] == "test"].reset_index(drop=True)
    labels = _labels(test)
    meta = images.set_index("path").loc[test["path"]].reset_index()
    y_paper = PS.truth(meta)
    p_paper, no_output = PS.probabilities(test, labels)
    own_prob = test[[f"prob_{n}" for n in labels]].to_numpy(float)
    cuts = np.array([ev["thresholds"][n]["cut"] for n in labels])
    out = {"groups": meta["group"].astype(str).to_numpy(), "y_paper": y_paper, "p_paper": p_paper,
           "shared": PS.shared_columns(labels), "no_output": no_output,
           "y_own": test[[f"y_{n}" for n in labels]].to_numpy(int),
           "d_own": positive(own_prob, cuts, ev.get("cut", "ge")), "labels": labels,
           "train": read_json(d / "train.json"), "eval": ev, "n_test": len(test)}
    if set(labels) == {PS.PAPER_TO_OURS[p] for p in PS.PAPER_PATHOLOGIES}:
        # trained on their labels: their rule on the finding must give the row's own targets
        own_in_paper_order = out["y_own"][:, [labels.index(PS.PAPER_TO_OURS[p]) for p in PS.PAPER_PATHOLOGIES]]
        out["truth_mismatches"] = int((own_in_paper_order != y_paper).any(1).sum())
    return out


def statistics(a: dict, paper_rule: tuple[float, str]) -> dict:
    """The three statistics of one fold's arrays, as functions of image weights; ``paper_rule``:
    :func:`cxrbench.classify.paper_scoring.rule`."""
    cols = a["shared"]
    decided = PS.decide(a["p_paper"], *paper_rule)
    return {"paper_f1": lambda w: B.weighted_micro_f1(a["y_paper"], decided, w),
            "own_f1": lambda w: B.weighted_micro_f1(a["y_own"], a["d_own"], w),
            "auroc": lambda w: B.weighted_micro_auroc(a["y_paper"][:, cols], a["p_paper"][:, cols], w)}


def load_rows(workdir: Path, names: list[str], folds: list[int]) -> dict[str, dict]:
    out = {}
    for name in names:
        row_dir = workdir / "rows" / name
        if not (row_dir / "row.json").is_file():
            raise FileNotFoundError(f"{row_dir / 'row.json'} not found: run `cxrbench ablation run "
                                    f"--only {name}` first")
        info = read_json(row_dir / "row.json")
        images = pd.read_csv(row_dir / "images.csv", keep_default_na=False, dtype=str)
        out[name] = {"info": info, "folds": {k: fold_arrays(row_dir, k, images) for k in folds}}
    return out


def _interval(ci: dict) -> dict:
    return {"mean": ci["estimate"], "low": ci["low"], "high": ci["high"]}


def settings(params: dict, abl: dict) -> dict:
    """What the ladder's runs were trained at: the first row's params (profile and common set applied)."""
    from cxrbench.ops.profiles import read_profile

    first = ladder(params)[0]
    m = apply_protocol(row_params(params, read_profile(abl["profile"]), abl, first))
    t = m["train"]
    return {"cache_px": m["preprocess"]["size"], "input_size": t["input_size"].get(abl["backbone"],
                                                                                 t["input_size"]["default"]),
            "epochs": t["epochs"], "pretrained": t["pretrained"]}


def build(params: dict, workdir: Path) -> dict:
    abl = validate(params)
    stats_p = B.validate(params)
    n_boot, seed, conf = stats_p["resamples"], stats_p["seed"], stats_p["confidence"]
    rows = ladder(params)
    folds = list(abl["folds"])
    paper_rule = PS.rule(params)
    data = load_rows(workdir, [r["name"] for r in rows], folds)
    st = {name: {k: statistics(d["folds"][k], paper_rule) for k in folds} for name, d in data.items()}

    def paired(a: str, b: str, m: str) -> dict:
        """Row ``a`` minus row ``b`` on statistic ``m``: paired bootstrap over each fold's test groups."""
        fa, fb = data[a]["folds"], data[b]["folds"]
        return B.fold_mean_ci([[(fa[k]["groups"], st[a][k][m]), (fb[k]["groups"], st[b][k][m])] for k in folds],
                              n_boot, seed, conf, stats_p["method"], stats_p["min_valid_share"])

    result, by_name = [], {}
    for i, row in enumerate(rows):
        name = row["name"]
        d = data[name]
        fa = d["folds"]
        entry = {"row": i, "name": name, "change": row["change"], "from": row["from"], "set": row["set"],
                 "overrides": row["overrides"], "cohort": d["info"]["cohort"],
                 "retrained": [not fa[k]["train"].get("resumed", False) for k in folds],
                 "train_images": [fa[k]["train"]["train_images"] for k in folds],
                 "val_images": [fa[k]["train"]["val_images"] for k in folds],
                 "test_images": [fa[k]["n_test"] for k in folds],
                 "test_images_removed_as_leaked": d["info"].get("test_images_removed_as_leaked"),
                 "labels": len(fa[folds[0]]["labels"]), "labels_without_output": fa[folds[0]]["no_output"],
                 "checkpoint_epochs": [fa[k]["eval"].get("checkpoint_epoch") for k in folds],
                 "truth_mismatches": sum(fa[k].get("truth_mismatches", 0) for k in folds),
                 "metrics": {}, "delta": {}}
        prevalence = np.mean([fa[k]["y_paper"].mean() for k in folds])
        entry["chance"] = {"auroc": 0.5, "paper_f1_flag_everything": float(2 * prevalence / (1 + prevalence)),
                           "paper_label_prevalence": float(prevalence)}
        for m in METRICS:
            per_fold = [st[name][k][m](np.ones(fa[k]["n_test"])) for k in folds]
            ci = B.fold_mean_ci([[(fa[k]["groups"], st[name][k][m])] for k in folds], n_boot, seed, conf,
                                stats_p["method"], stats_p["min_valid_share"])
            entry["metrics"][m] = {**_interval(ci), "folds": per_fold, "fold_sd": float(np.std(per_fold, ddof=1)),
                                   "undefined": ci["undefined"]}
        if row["from"] is not None:
            base = by_name[row["from"]]
            same_design = d["info"]["cohort"] == data[row["from"]]["info"]["cohort"] == "paper"
            ratio = float(np.mean([fa[k]["n_test"] / max(1, fa[k]["train"]["train_images"]) for k in folds]))
            for m in METRICS:
                diffs = [a - b for a, b in zip(entry["metrics"][m]["folds"], base["metrics"][m]["folds"])]
                nb = B.corrected_resampled_t(diffs, ratio, conf) if same_design else None
                entry["delta"][m] = {**_interval(paired(name, row["from"], m)), "folds": diffs, "corrected_t": nb}
        if i:                                   # the whole way from the first row (F1 only: paired, cheap)
            entry["from_first"] = {m: _interval(paired(name, rows[0]["name"], m)) for m in ("paper_f1", "own_f1")}
        result.append(entry)
        by_name[name] = entry
    first = data[rows[0]["name"]]["info"]
    return {"backbone": abl["backbone"], "profile": abl["profile"], "settings": settings(params, abl),
            "folds": folds, "confidence": conf, "resamples": n_boot, "stats_seed": seed,
            "paper_rule": list(paper_rule), "commit": first.get("commit"), "runtime": first.get("runtime"),
            "metrics": METRICS, "rows": result}


def _ci(m: dict) -> str:
    if m.get("low") is None:
        return f"{m['mean']:.3f} [no CI]"
    return f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def _delta(m: dict | None) -> str:
    if not m:
        return "–"
    if m.get("low") is None:
        text = f"{m['mean']:+.3f} [no CI]"
    else:
        text = f"{m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]"
    nb = m.get("corrected_t")
    if nb and nb.get("low") is not None:
        text += f"; t [{nb['low']:+.3f}, {nb['high']:+.3f}]"
    return text


def _override_line(overrides: dict) -> str:
    """``-S 'key=value'`` items; values in YAML flow style, which both ``--set`` and ``dvc exp run -S`` read."""
    def value(v) -> str:
        return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
    return " ".join(f"-S '{k}={value(v)}'" for k, v in overrides.items())


def markdown(result: dict) -> str:
    rt = result.get("runtime") or {}
    hw = (f"{rt.get('cpu', 'CPU')} ({rt.get('cpu_capability', '?')}), {rt.get('torch_threads', '?')} torch threads, "
          f"torch {rt.get('torch', '?')}")
    rows = result["rows"]
    cfg = result["settings"]
    threshold, cut = result["paper_rule"]
    heads = [f"micro F1, paper scoring (their 14 labels, {'>' if cut == 'gt' else '>='} {threshold})",
             *list(METRICS.values())[1:]]
    lines = [f"# Ablation ladder: from the authors' code to the rebuilt cohort, one factor per row", "",
             f"{result['backbone']} at the `{result['profile']}` profile's settings ({cfg['cache_px']} px cache, "
             f"{cfg['input_size']} px input, {cfg['epochs']} epochs, pretrained: {cfg['pretrained']}), folds "
             f"{', '.join(map(str, result['folds']))}; commit "
             f"{(result.get('commit') or '?')[:8]}; {hw}. Built by `cxrbench ablation table` from the rows "
             f"of `cxrbench ablation run`.", "",
             f"Each cell: mean over folds [{result['confidence']:.0%} CI, bootstrap of test patient groups within each "
             f"fold, {result['resamples']} resamples]. Δ: change from the row named in *from* (paper scoring: what the "
             f"row changed in the model and the test set; own scoring: what the protocol would report), paired "
             f"bootstrap CI; `t [..]`: Nadeau-Bengio corrected resampled t interval over the "
             f"{len(result['folds'])} fold differences (training variation included; authors' folds only). "
             f"Chance: AUROC 0.5; micro F1 of flagging every label of the paper's scoring: "
             f"{rows[0]['chance']['paper_f1_flag_everything']:.3f} (label prevalence "
             f"{rows[0]['chance']['paper_label_prevalence']:.3f}).", "",
             "| # | row: what changes | from | trained | " + " | ".join(heads)
             + " | Δ F1, paper scoring | Δ F1, own scoring |",
             "|---:|---|---|---|---|---|---|---|---|"]
    for r in rows:
        trained = ("retrained" if all(r["retrained"]) else "re-scored" if not any(r["retrained"])
                   else f"retrained {sum(r['retrained'])}/{len(r['retrained'])}")
        lines.append(f"| {r['row']} | **{r['name']}**: {r['change']} | {r['from'] or '–'} | {trained} | "
                     + " | ".join(_ci(r["metrics"][m]) for m in METRICS)
                     + f" | {_delta(r['delta'].get('paper_f1'))} | {_delta(r['delta'].get('own_f1'))} |")
    lines += ["", "Per row: the change of micro AUROC, the fold sd (training variation, and test sampling where "
                  "folds have their own test sets), and the data:", "",
              f"| # | row | Δ micro AUROC | F1 change from row 0 ({rows[0]['name']}): paper scoring; own scoring "
              "| fold sd (paper F1, own F1) | test images per fold | train / selection "
              "images per fold (selection = the test split itself under `selection: test`) |",
              "|---:|---|---|---|---|---|---|"]
    for r in rows:
        sd = f"{r['metrics']['paper_f1']['fold_sd']:.3f}, {r['metrics']['own_f1']['fold_sd']:.3f}"
        ff = r.get("from_first")
        whole = f"{_delta(ff['paper_f1'])}; {_delta(ff['own_f1'])}" if ff else "–"
        lines.append(f"| {r['row']} | {r['name']} | {_delta(r['delta'].get('auroc'))} | {whole} | {sd} | "
                     f"{', '.join(map(str, r['test_images']))} | "
                     f"{', '.join(f'{a}/{b}' for a, b in zip(r['train_images'], r['val_images']))} |")
    lines += ["", "## Rerunning a row", "",
              "Each row is the profile plus these overrides (`cxrbench profiles run "
              f"{result['profile']} --set KEY=VALUE ...`, or `dvc exp run` with the profile's and these `-S`); "
              f"`cxrbench ablation run --only NAME` runs just the stages the ladder needs "
              f"(train.backbones=[{result['backbone']}], train.folds={result['folds']}).", ""]
    for r in rows:
        lines.append(f"- **{r['name']}**: `{_override_line(r['overrides'])}`")
    mismatch = sum(r["truth_mismatches"] for r in rows)
    lines += ["", f"Check: on rows trained on their labels, their rule applied to the findings gives the "
                  f"training targets on every test image ({mismatch} mismatches)."]
    return "\n".join(lines) + "\n"


def write_table(params_path: Path, workdir: Path, out: Path) -> dict:
    params = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    section(params, "ablation")
    result = build(params, workdir)
    write_json(out.with_suffix(".json"), result)
    text = markdown(result)
    write_text(out.with_suffix(".md"), text)
    print(text)
    return result
