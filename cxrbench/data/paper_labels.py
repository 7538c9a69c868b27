"""The authors' 14 labels and their labelling rule, as facts of their code (soumickmj/diagnoPP @ 26fc886,
utils/dataloader_pyt_CXR.py).

A module of constants with no imports from the package, so that ``labels``
(their label view) and ``cohort`` (their cohort) both read it without an
import circle.
"""

from __future__ import annotations

PAPER_VIEWS = ("PA", "AP", "AP Supine")
PAPER_PNEUMONIAS = ("COVID-19", "SARS", "MERS", "ARDS", "Streptococcus", "Pneumocystis", "Klebsiella",
                    "Chlamydophila", "Legionella")
PAPER_PATHOLOGIES: tuple[str, ...] = tuple(sorted(
    ["Pneumonia", "Viral Pneumonia", "Bacterial Pneumonia", "Fungal Pneumonia", "No Finding"]
    + list(PAPER_PNEUMONIAS)))
PAPER_MAPPING: dict[str, tuple[str, ...]] = {
    "Pneumonia": PAPER_PNEUMONIAS,
    "Viral Pneumonia": ("COVID-19", "SARS", "MERS"),
    "Bacterial Pneumonia": ("Streptococcus", "Klebsiella", "Chlamydophila", "Legionella"),
    "Fungal Pneumonia": ("Pneumocystis",),
}
PAPER_TO_OURS: dict[str, str] = {
    "Pneumonia": "pneumonia", "Viral Pneumonia": "viral", "Bacterial Pneumonia": "bacterial",
    "Fungal Pneumonia": "fungal", "No Finding": "healthy", "COVID-19": "covid19", "SARS": "sars",
    "MERS": "mers", "ARDS": "ards", "Streptococcus": "streptococcus", "Pneumocystis": "pneumocystis",
    "Klebsiella": "klebsiella", "Chlamydophila": "chlamydophila", "Legionella": "legionella",
}
