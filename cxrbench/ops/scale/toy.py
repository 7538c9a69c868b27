"""A toy DVC project with the study's shape (a shared stage, two matrices, persistent training outputs, an
aggregate): ``cxrbench scale check`` runs it on a cluster and serially and compares the outputs byte for byte,
and the tests and ``benchmarks/scale_overhead.py`` run the fan-out on it in seconds instead of hours."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["DVC_YAML", "PARAMS", "SCRIPT", "make"]

# One script for every stage: deterministic bytes from the params and the inputs. TOY_SLEEP (seconds) makes a
# `train` cell last long enough to be killed; TOY_FAIL names a cell that fails while the file it names exists;
# TOY_COUNT, a file that each run of a stage appends its name to (how often each stage really ran).
SCRIPT = textwrap.dedent('''\
    import hashlib, json, os, sys, time
    from pathlib import Path

    import yaml

    def digest(*parts):
        return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()

    def write(path, text):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    kind, *args = sys.argv[1:]
    name = kind + ("@" + "-".join(args) if args else "")
    if os.environ.get("TOY_COUNT"):
        with open(os.environ["TOY_COUNT"], "a") as f:
            f.write(name + "\\n")
    params = yaml.safe_load(open("params.yaml"))
    if kind == "prep":
        write("data/prep.txt", digest("prep", params["seed"]) + "\\n")
    elif kind == "train":
        item, fold = args
        flag = os.environ.get("TOY_FAIL", "")
        if flag.startswith(name + ":") and Path(flag.split(":", 1)[1]).exists():
            sys.exit(f"toy failure of {name}")
        out = Path(f"models/{item}/fold{fold}")
        epochs = params["epochs"]
        done = int((out / "last.txt").read_text()) if (out / "last.txt").exists() else 0
        for epoch in range(done, epochs):
            time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
            write(out / "last.txt", str(epoch + 1))
        prep = Path("data/prep.txt").read_text()
        write(out / "best.txt", digest(prep, item, fold, epochs) + "\\n")
        write(f"metrics/train/{item}-f{fold}.json", json.dumps({"epochs": epochs, "resumed_from": 0}) + "\\n")
        write(f"dvclive/train/{item}-f{fold}/metrics.tsv", "epoch\\tloss\\n" + "".join(
            f"{e}\\t{int(digest(item, fold, e), 16) % 1000 / 1000}\\n" for e in range(epochs)))
    elif kind == "evaluate":
        item, fold = args
        model = Path(f"models/{item}/fold{fold}/best.txt").read_text()
        write(f"preds/{item}-f{fold}.csv", "score\\n" + digest(model, "eval") + "\\n")
        write(f"metrics/eval/{item}-f{fold}.json", json.dumps({"score": int(digest(model), 16) % 997}) + "\\n")
    elif kind == "aggregate":
        rows = sorted(p.read_text() for p in Path("preds").glob("*.csv"))
        write("summary.json", json.dumps({"n": len(rows), "digest": digest(*rows)}) + "\\n")
    else:
        sys.exit(f"unknown stage {kind}")
''')

DVC_YAML = textwrap.dedent('''\
    stages:
      prep:
        cmd: python toy.py prep
        deps: [toy.py]
        params: [seed]
        outs: [data/prep.txt]
      train:
        matrix:
          item: ${items}
          fold: ${folds}
        cmd: python toy.py train ${item.item} ${item.fold}
        deps: [toy.py, data/prep.txt]
        params: [epochs]
        outs:
          - models/${item.item}/fold${item.fold}:
              persist: true
          - dvclive/train/${item.item}-f${item.fold}:
              cache: false
              persist: true
        metrics:
          - metrics/train/${item.item}-f${item.fold}.json:
              cache: false
      evaluate:
        matrix:
          item: ${items}
          fold: ${folds}
        cmd: python toy.py evaluate ${item.item} ${item.fold}
        deps:
          - toy.py
          - models/${item.item}/fold${item.fold}
        outs:
          - preds/${item.item}-f${item.fold}.csv
        metrics:
          - metrics/eval/${item.item}-f${item.fold}.json:
              cache: false
      aggregate:
        cmd: python toy.py aggregate
        deps: [toy.py, preds]
        outs: [summary.json]
''')

PARAMS = textwrap.dedent('''\
    seed: 0
    epochs: 2
    items: [a, b]
    folds: [0, 1]
    scale:
      stages: [train, evaluate]
      cpus: {default: 1}
      gpus: {default: 0}
      threads: 1
      retries: 2
''')


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {cwd} failed:\n{done.stdout}\n{done.stderr}")


def make(path: Path, items: list[str] | None = None) -> Path:
    """A new git + DVC repository at ``path`` (which must not exist) holding the toy project, committed."""
    path = Path(path)
    path.mkdir(parents=True)
    params = PARAMS if items is None else PARAMS.replace("items: [a, b]", f"items: [{', '.join(items)}]")
    (path / "toy.py").write_text(SCRIPT)
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "params.yaml").write_text(params)
    _run(["git", "init", "-q"], path)
    _run(["git", "config", "user.email", "toy@example.org"], path)
    _run(["git", "config", "user.name", "toy"], path)
    _run([sys.executable, "-m", "dvc", "init", "-q"], path)
    _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], path)
    _run(["git", "add", "-A"], path)
    _run(["git", "commit", "-q", "-m", "toy project"], path)
    return path
