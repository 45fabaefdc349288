"""Classify one photo with a recorded run (top-tuned or fine-tuned)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from toptune_core.errors import ToptuneError
from toptune_core.evaluation import full_proba
from toptune_core.features.extractor import FeatureExtractor
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

    Build with ``Predictor.from_run(run_id)``. Loading takes a few seconds (the
    backbone); each prediction after that takes a fraction of a second on a CPU.
    """

    def __init__(self, run: RunRecord, classes: list[str], extractor: Optional[FeatureExtractor] = None,
                 classifier=None, finetuned=None):
        self.run, self.classes = run, classes
        self.extractor, self.classifier, self.finetuned = extractor, classifier, finetuned

    @classmethod
    def from_run(cls, run_id: str, store: Optional[RunStore] = None,
                 extractor: Optional[FeatureExtractor] = None) -> "Predictor":
        store = store or RunStore()
        run = store.get(run_id)
        if run.status != "completed":
            raise ToptuneError(f"Run {run.id} is {run.status}, not completed; choose a completed run.")
        if run.method == "finetune":
            from toptune_core.finetune import load_finetuned

            model = load_finetuned(store, run)
            return cls(run, list(model.classes), finetuned=model)
        saved = store.load_model(run.id)
        if extractor is None or extractor.backbone != run.backbone:
            extractor = FeatureExtractor(run.backbone)
        return cls(run, list(saved["classes"]), extractor=extractor, classifier=saved["classifier"])

    def predict(self, source: ImageSource) -> Prediction:
        """Class probabilities for one photo (path, bytes or file object). Unreadable photos raise ImageError."""
        start = time.perf_counter()
        if self.finetuned is not None:
            proba = self.finetuned.predict_proba_image(source)
        else:
            import torch

            x = self.extractor.preprocess(source)
            feats = self.extractor.features_of(torch.stack([x]))
            proba = full_proba(self.classifier, feats, len(self.classes))[0]
        return Prediction(self.classes, np.asarray(proba, dtype=np.float64), time.perf_counter() - start)
