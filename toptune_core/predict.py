"""Classify one photo with a recorded run (top-tuned or fine-tuned)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from toptune_core.errors import ToptuneError
from toptune_core.methods import method_class
from toptune_core.methods.base import Photos
from toptune_core.data.images import ImageSource
from toptune_core.runs.store import RunRecord, RunStore


@dataclass
class Prediction:
    classes: list[str]
    probabilities: np.ndarray  # aligned with classes
    seconds: float

    @property
    def label(self) -> str:
        return self.classes[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities)[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]


class Predictor:
    """A loaded model from one run; ``predict(photo)`` gives class probabilities.

    Build with ``Predictor.from_run(run_id)``: whatever estimator the run
    saved (``methods.method_class(run.method).from_run``). Loading takes a few
    seconds (the backbone); each prediction after that takes a fraction of a
    second on a CPU.
    """

    def __init__(self, run: RunRecord, estimator):
        self.run, self.estimator = run, estimator
        self.classes = list(estimator.classes_)

    @classmethod
    def from_run(cls, run_id: str, store: Optional[RunStore] = None, extractor=None) -> "Predictor":
        store = store or RunStore()
        run = store.get(run_id)
        if run.status != "completed":
            raise ToptuneError(f"Run {run.id} is {run.status}, not completed; choose a completed run.")
        return cls(run, method_class(run.method).from_run(store, run, extractor=extractor))

    def predict(self, source: ImageSource) -> Prediction:
        """Class probabilities for one photo (path, bytes or file object). Unreadable photos raise ImageError."""
        start = time.perf_counter()
        proba = self.estimator.predict_proba(Photos([source]))[0]
        return Prediction(self.classes, np.asarray(proba, dtype=np.float64), time.perf_counter() - start)
