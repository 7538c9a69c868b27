"""The ``cxrbench`` command: one entry point for every tool a user runs.

    cxrbench run sample                  # a profile of the pipeline (same as: cxrbench profiles run sample)
    cxrbench profiles show ci            # the command a profile runs, ready to copy
    cxrbench show                        # the headline metrics of this workspace (or: cxrbench show EXPERIMENT)
    cxrbench diff HEAD clahe             # two runs' headline metrics side by side
    cxrbench times                       # where the last run's time went, stage by stage
    cxrbench repro                       # dvc repro, with faster bookkeeping (cxrbench.ops._dvc)
    cxrbench report                      # write report/ from this workspace's outputs
    cxrbench predict my_xrays --out predictions.csv
    cxrbench gate check                  # CI's metric gate
    cxrbench --help                      # this list; cxrbench SUBCOMMAND --help for each

``python -m cxrbench`` is the same command.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# subcommand -> (module[:function] whose main(argv) runs it, one line of help). Modules are imported only when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("cxrbench.ops.profiles", "run a profile of the pipeline (profiles/NAME.yaml) as a DVC experiment"),
    "profiles": ("cxrbench.ops.profiles", "show a profile's command, or run it"),
    "show": ("cxrbench.ops.show", "the headline metrics of the workspace, an experiment or a git revision"),
    "diff": ("cxrbench.ops.show:diff_main", "two runs' headline metrics side by side, with the change"),
    "times": ("cxrbench.ops.times", "where the last run's time went: seconds and share per stage, hottest steps"),
    "report": ("cxrbench.report.document", "write report/ (README.md, the offline index.html, the model card) from this workspace's outputs"),
    "predict": ("cxrbench.studies.predict.cli", "predict the labels of your own radiographs with a trained run"),
    "gate": ("cxrbench.ops.gate", "compare the CI run's metrics with the committed baseline (check, snapshot)"),
    "spread": ("cxrbench.ops.spread", "measure how far the gate's metrics move when only the machine changes"),
    "ablation": ("cxrbench.ops.ablation", "run and tabulate the ablation ladder"),
    "bundle": ("cxrbench.ops.bundle.cli", "pack, run and collect the offline GPU bundle"),
    "scale": ("cxrbench.ops.scale.cli", "run the matrix stages as Ray tasks on a cluster, merged by DVC's run-cache"),
    "weights": ("cxrbench.classify.weights", "convert packaged ImageNet weights into a timm checkpoint"),
    "deps": ("cxrbench.ops.deps", "check that each DVC stage's deps cover all the code it runs"),
    "repro": ("cxrbench.ops._dvc:repro_main", "dvc repro with faster bookkeeping (same outputs, same dvc.lock)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip().splitlines()[0], "", "usage: cxrbench SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "cxrbench SUBCOMMAND --help shows each one's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(COMMANDS)}"
        print(f"cxrbench: unknown subcommand {name!r}{hint}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    if name == "run":
        rest = ["run", *rest]
    return int(getattr(module, function or "main")(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
