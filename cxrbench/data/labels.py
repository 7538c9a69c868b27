"""The label table: upstream findings -> hierarchical multi-hot labels.

Everything comes from ``params.yaml: labels``: the label names (column order),
the child -> parent hierarchy of Chatterjee et al., and an explicit table from
each source's finding to labels. Nothing is guessed from substrings: a finding
that is not in the table is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrbench.core.params import ParamError, section
from cxrbench.data.paper_labels import PAPER_PATHOLOGIES, PAPER_TO_OURS


class UnmappedFindingError(ValueError):
    pass


@dataclass(frozen=True)
class LabelTable:
    names: tuple[str, ...]
    parents: dict[str, str]
    findings: dict[str, dict[str, tuple[str, ...]]]

    @classmethod
    def from_params(cls, params: dict) -> "LabelTable":
        names = section(params, "labels.names")
        if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
                or len(set(names)) != len(names)):
            raise ParamError("labels.names", f"expected a list of unique label names, got {names!r}")
        parents = section(params, "labels.parents") or {}
        for child, parent in parents.items():
            for key, lab in (("child", child), ("parent", parent)):
                if lab not in names:
                    raise ParamError("labels.parents", f"{key} {lab!r} is not in labels.names {names}")
        # refuse cycles
        for child in parents:
            seen, node = {child}, child
            while node in parents:
                node = parents[node]
                if node in seen:
                    raise ParamError("labels.parents", f"cycle through {child!r}")
                seen.add(node)
        findings = section(params, "labels.findings")
        table: dict[str, dict[str, tuple[str, ...]]] = {}
        for source, mapping in findings.items():
            table[source] = {}
            for finding, labs in mapping.items():
                if not isinstance(labs, list) or not labs:
                    raise ParamError(f"labels.findings.{source}", f"{finding!r} must map to a list of labels")
                bad = [lab for lab in labs if lab not in names]
                if bad:
                    raise ParamError(f"labels.findings.{source}",
                                     f"{finding!r} maps to unknown label(s) {bad}; add them to labels.names")
                table[source][str(finding)] = tuple(labs)
        ours = cls(tuple(names), dict(parents), table)
        if params.get("cohort") == "paper" and (params.get("paper_rules") or {}).get("labels") == "paper":
            return ours.paper_view()
        return ours

    def paper_view(self) -> "LabelTable":
        """The authors' 14 outputs (their order, our label ids), for ``cohort: paper`` with ``paper_rules.labels: paper``.

        Their labels come from their substring rule (cxrbench.data.cohort.paper_labels, constants in
        cxrbench.data.paper_labels),
        not from a findings table; the hierarchy is ours restricted to their
        labels, plus MERS under viral.
        """
        names = tuple(PAPER_TO_OURS[p] for p in PAPER_PATHOLOGIES)
        parents = {c: p for c, p in self.parents.items() if c in names and p in names}
        parents["mers"] = "viral"
        return LabelTable(names, parents, {})

    def ancestors(self, label: str) -> list[str]:
        out = []
        while label in self.parents:
            label = self.parents[label]
            out.append(label)
        return out

    def labels_of(self, source: str, finding: str) -> list[str]:
        """The labels of one finding with every ancestor added, in ``names`` order."""
        if source not in self.findings:
            raise UnmappedFindingError(f"no label table for source {source!r} under labels.findings")
        if finding not in self.findings[source]:
            raise UnmappedFindingError(
                f"finding {finding!r} of source {source!r} is not in `labels.findings.{source}` of "
                f"params.yaml; add it with the labels it stands for")
        labs = set()
        for lab in self.findings[source][finding]:
            labs.add(lab)
            labs.update(self.ancestors(lab))
        return [n for n in self.names if n in labs]

    def multi_hot(self, labels: list[str]) -> np.ndarray:
        vec = np.zeros(len(self.names), dtype=np.uint8)
        for lab in labels:
            vec[self.names.index(lab)] = 1
        return vec

    def leaf(self, labels: list[str]) -> str:
        """The most specific label of a set (deepest in the hierarchy); used for stratification."""
        return max(labels, key=lambda lab: (len(self.ancestors(lab)), -self.names.index(lab)))


def scored_outputs(frame) -> list[str]:
    """The outputs a predictions frame scores: each ``prob_NAME`` column with its truth ``y_NAME`` (a multiclass
    run's snapshot columns, ``prob_sK_CLASS``, have none and are not outputs of their own)."""
    return [c[len("prob_"):] for c in frame.columns if c.startswith("prob_") and f"y_{c[len('prob_'):]}" in frame]
