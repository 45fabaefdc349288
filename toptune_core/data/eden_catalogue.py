"""The Eden Library catalogue: the dataset folders Eden's own notebooks name, searchable, with presets.

``eden_catalogue.csv`` (shipped beside this module, a copy of the project's
``shared/datasets/eden_catalogue.csv``) lists 26 dataset folder names, each as
it appears in at least one notebook of Eden's notebook repository, with its
crop, condition, folder layout and one notebook that uses it. Each dataset is
one species and condition and becomes one class: the folder-name prefix
before the first ``-`` (``eden_label``), so two Tomato datasets are one class
"Tomato". Eden's server may also serve names not listed here; those can be
typed by hand. Zip sizes are not recorded in the notebooks (Eden's zips are
0.2 to 1.2 GB).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from toptune_core.data.dataset import eden_label

CATALOGUE_FILE = Path(__file__).resolve().parent / "eden_catalogue.csv"
TOP_TUNING_NOTEBOOK = "image_classification/plant_identification-top_tuning-1.ipynb"

#: The folder layouts (see ``data.dataset``): ``old`` has the photos directly in the folder with a
#: metadata file, ``new`` has them in ``images/``, ``2023`` is the naming of the 2023 notebooks.
LAYOUTS = {
    "old": "<Common name>-<DDMMYY>-<condition>-zz-V1-<export timestamp>, photos directly in the folder",
    "new": "<Common>-<Genus_species>-<condition>-PRX-RGB-NA-<YYYYMMDD>, photos in images/",
    "2023": "<Common>-<Genus species>-<DDMMYY>-<condition>-zz (2023 notebooks)",
}


@dataclass(frozen=True)
class EdenDataset:
    """One Eden dataset: its folder ``name``, ``crop``, ``condition``, ``layout`` and a ``notebook`` that uses it."""

    name: str
    crop: str
    condition: str
    layout: str = ""
    notebook: str = ""

    @property
    def label(self) -> str:
        """The class this dataset becomes (Eden's rule: the folder-name prefix before the first ``-``)."""
        return eden_label(self.name)

    def describe(self) -> str:
        return f"{self.crop} · {self.condition} → class '{self.label}'"

    def matches(self, query: str) -> bool:
        """True if every word of ``query`` is in the crop, condition, class, name or layout (any case)."""
        text = " ".join((self.crop, self.condition, self.label, self.name, self.layout)).lower()
        return all(word in text for word in query.lower().split())


def load_catalogue(path: Path = CATALOGUE_FILE) -> tuple[EdenDataset, ...]:
    """The catalogue file's datasets, in file order."""
    with open(path, newline="", encoding="utf-8") as fh:
        return tuple(EdenDataset(row["folder_name"].strip(), row["crop"].strip(), row["condition"].strip(),
                                 row.get("layout", "").strip(), row.get("source_notebook", "").strip())
                     for row in csv.DictReader(fh) if row.get("folder_name", "").strip())


EDEN_CATALOGUE: tuple[EdenDataset, ...] = load_catalogue()


@dataclass(frozen=True)
class EdenPreset:
    """A named choice of datasets, e.g. those of one Eden notebook."""

    key: str
    title: str
    names: tuple[str, ...]


#: Presets. Eden's top-tuning notebook uses four healthy crops of the new layout (processing tomato,
#: tomato, watermelon, cucumber); the catalogue names one notebook per dataset, so other notebooks'
#: full choices are not known and get no preset.
EDEN_PRESETS: dict[str, EdenPreset] = {p.key: p for p in (
    EdenPreset("top-tuning", "Eden's top-tuning notebook",
               tuple(d.name for d in EDEN_CATALOGUE if d.notebook == TOP_TUNING_NOTEBOOK)),
)}


def search(query: str, catalogue: Sequence[EdenDataset] = EDEN_CATALOGUE) -> list[EdenDataset]:
    """The datasets matching every word of ``query`` (all of them for an empty query)."""
    return [d for d in catalogue if d.matches(query)]


def find(name: str, catalogue: Sequence[EdenDataset] = EDEN_CATALOGUE) -> Optional[EdenDataset]:
    """The catalogue entry of folder ``name``, or None for a name typed by hand."""
    return next((d for d in catalogue if d.name == name), None)


def describe_name(name: str) -> str:
    """How a dataset name reads in a list: the catalogue's crop, condition and class, or, for a name typed by
    hand, the name itself (what was typed is what is downloaded)."""
    entry = find(name)
    return entry.describe() if entry else name
