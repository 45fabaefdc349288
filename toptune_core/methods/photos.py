"""What the methods take and give: ``PhotoTable`` (what ``read`` found in a dataset) and ``Photos`` (photos
handed to ``fit`` / ``predict_proba``). NumPy only, so prediction can use them without scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class PhotoTable:
    """What ``read`` found in one dataset: readable photos, reasons for the others, and up-front features."""

    ok: np.ndarray  # (n,) bool, in dataset order
    errors: list[tuple[int, str]]  # (index, one-line reason) of unreadable photos
    features: Optional[np.ndarray] = None  # (n_ok, dim) for the readable photos, when the method uses features
    seconds: float = 0.0  # time spent reading in this call
    cost_seconds: float = 0.0  # what producing this table cost when it was first made (feature extraction)
    cache_hit: Optional[bool] = None


@dataclass
class Photos:
    """Photos handed to ``fit`` / ``predict_proba``: paths (or in-memory sources), and their features if known."""

    paths: list  # str paths, or file-like sources for single uploaded photos
    features: Optional[np.ndarray] = None  # (len(paths), dim), aligned with paths

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> "Photos":
        idx = list(idx)
        return Photos([self.paths[i] for i in idx], None if self.features is None else self.features[idx])
