"""What ``cxrbench scale`` runs where: the DVC graph read through DVC's Python API, split into the shared
upstream stages (run by the coordinator), the matrix cells fanned out as tasks (``scale.stages``) with the
cells each one waits for, and the aggregates (plain ``dvc repro`` at the end); the resources of each task
from ``params.yaml: scale``. No Ray here: a plan is computed and checked without a cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.core.params import ParamError, check_int, check_names, section

__all__ = ["Settings", "Task", "Plan", "settings", "make_plan", "base_name", "slug"]


@dataclass(frozen=True)
class Settings:
    """``params.yaml: scale``: which stages fan out, and what each task reserves."""
    stages: tuple[str, ...]
    cpus: dict[str, int]
    gpus: dict[str, int]
    threads: int
    retries: int

    def resources(self, stage: str) -> tuple[int, int]:
        """(CPUs, GPUs) a task of ``stage`` (a base name, e.g. ``train``) reserves."""
        return (self.cpus.get(stage, self.cpus["default"]), self.gpus.get(stage, self.gpus["default"]))


def _per_stage(params: dict, key: str, minimum: int) -> dict[str, int]:
    value = section(params, key)
    if not isinstance(value, dict) or "default" not in value:
        raise ParamError(key, f"expected a mapping with a `default` and optional stage names, e.g. "
                              f"{{default: 1, train: 2}}; got {value!r}")
    return {str(k): check_int(f"{key}.{k}", v, minimum=minimum) for k, v in value.items()}


def settings(params: dict) -> Settings:
    """The validated ``scale`` section of ``params``; errors name the key."""
    stages = tuple(check_names("scale.stages", section(params, "scale.stages")))
    if not stages:
        raise ParamError("scale.stages", "empty: name the matrix stages to run as tasks, e.g. [train, evaluate]")
    cpus = _per_stage(params, "scale.cpus", 1)
    gpus = _per_stage(params, "scale.gpus", 0)
    return Settings(stages=stages, cpus=cpus, gpus=gpus,
                    threads=check_int("scale.threads", section(params, "scale.threads"), minimum=1),
                    retries=check_int("scale.retries", section(params, "scale.retries"), minimum=0))


def base_name(address: str) -> str:
    """``train@resnet18-0`` -> ``train``."""
    return address.split("@", 1)[0]


def slug(address: str) -> str:
    """A file name for a stage address (``train@resnet18-0`` -> ``train@resnet18-0``, ``/`` and spaces made safe)."""
    return "".join(c if c.isalnum() or c in "@-_.+" else "_" for c in address)


@dataclass
class Task:
    """One matrix cell run as a Ray task: ``dvc repro --single-item stage`` in its own worktree."""
    stage: str
    needs: list[str]                 # fanned-out cells it depends on, transitively (their results are adopted)
    upstream: list[str]              # shared stages it depends on (checked out from the shared cache)
    cpus: int
    gpus: int
    persist: bool                    # DVC's run-cache cannot carry it (a persistent or a plain cache: false
                                     # output; see worker.adopt): its result is adopted
    uncached: list[str] = field(default_factory=list)   # outputs with cache: false, shipped with the result


@dataclass
class Plan:
    upstream: list[str]              # shared stages, in an order DVC can run them
    tasks: dict[str, Task]           # fanned-out cells, topologically ordered
    aggregates: list[str]            # everything else
    outs: list[str] = field(default_factory=list)   # every output path of the pipeline

    def describe(self) -> str:
        lines = [f"coordinator first: {len(self.upstream)} shared stage(s): {', '.join(self.upstream) or '-'}",
                 f"tasks: {len(self.tasks)}"]
        for t in self.tasks.values():
            after = f", after {', '.join(t.needs)}" if t.needs else ""
            lines.append(f"  {t.stage}  [{t.cpus} CPU, {t.gpus} GPU{', persistent outputs' if t.persist else ''}"
                         f"{after}]")
        lines.append(f"then dvc repro: {len(self.aggregates)} other stage(s): {', '.join(self.aggregates) or '-'}")
        return "\n".join(lines)


def _graph(root: Path):
    from dvc.repo import Repo

    def address(stage) -> str:               # as DVC commands name it in root (not relative to our cwd)
        rel = os.path.relpath(stage.path, root)
        return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = repo.index.graph            # edges: stage -> the stages it depends on
        nodes = {}
        for stage in graph.nodes:
            if not getattr(stage, "cmd", None):
                continue                     # a .dvc file (tracked data), not a pipeline stage
            nodes[address(stage)] = {
                "deps": sorted(address(d) for d in graph.successors(stage) if getattr(d, "cmd", None)),
                # DVC keeps no run-cache entry for a stage with a persistent output (``_can_hash``) nor for one
                # with a ``cache: false`` output that is not a metric or plot (``Stage.run``: no_cache_outs):
                # such a cell's result is adopted by its dvc.lock entry (worker.adopt), not restored
                "persist": any(o.persist for o in stage.outs)
                           or any(not o.use_cache and not (o.is_metric or o.is_plot) for o in stage.outs),
                "uncached": sorted(str(o.def_path) for o in stage.outs if not o.use_cache),
                "outs": sorted(str(o.def_path) for o in stage.outs),
            }
    return nodes


def _topological(nodes: dict[str, dict]) -> list[str]:
    order, seen = [], set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in nodes[name]["deps"]:
            visit(dep)
        order.append(name)

    for name in sorted(nodes):
        visit(name)
    return order


def make_plan(root: Path, conf: Settings, nodes: dict[str, dict] | None = None) -> Plan:
    """Split the pipeline of the repository at ``root`` (``nodes``: its graph, read with DVC's API when None)."""
    nodes = _graph(root) if nodes is None else nodes
    order = _topological(nodes)
    fanned = [n for n in order if base_name(n) in conf.stages]
    known = {base_name(n) for n in nodes}
    missing = sorted(set(conf.stages) - known)
    if missing:
        raise ParamError("scale.stages", f"{missing} are not stages of dvc.yaml")
    for key, table in (("scale.cpus", conf.cpus), ("scale.gpus", conf.gpus)):
        unknown = sorted(set(table) - known - {"default"})
        if unknown:
            raise ParamError(key, f"names {unknown}, which are not stages of dvc.yaml")

    def ancestors(name: str) -> set[str]:
        out, todo = set(), list(nodes[name]["deps"])
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo.extend(nodes[n]["deps"])
        return out

    tasks, upstream = {}, set()
    for name in fanned:
        anc = ancestors(name)
        shared = {a for a in anc if base_name(a) not in conf.stages}
        for a in shared:
            if ancestors(a) & set(fanned):
                raise ParamError("scale.stages", f"{name} depends on {a}, which is not fanned out but depends "
                                                 f"on a stage that is; add {base_name(a)!r} to scale.stages")
        upstream |= shared
        cpus, gpus = conf.resources(base_name(name))
        tasks[name] = Task(stage=name, needs=[a for a in order if a in anc and a not in shared],
                           upstream=[a for a in order if a in shared], cpus=cpus, gpus=gpus,
                           persist=nodes[name]["persist"], uncached=nodes[name]["uncached"])
    return Plan(upstream=[n for n in order if n in upstream], tasks=tasks,
                aggregates=[n for n in order if n not in upstream and n not in tasks],
                outs=sorted({o for n in nodes.values() for o in n.get("outs", [])}))
