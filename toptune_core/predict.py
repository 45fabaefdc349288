"""Diagnose photos with a recorded run: class probabilities, and whether the model knows such photos at all.

``Predictor.from_run(run_id)`` loads whatever estimator the run saved - for a
top-tuning run its portable ONNX form (``portable.top``), so a new process
classifies a photo without importing torch or scikit-learn; otherwise
``methods.method_class(run.method).from_run`` - and its familiarity check
(``trust.familiarity``, NumPy only). ``predict(photo)`` gives every class's probability,
the familiarity score and verdict, and the nearest training photos as
evidence; a photo unlike the training photos is "not recognised" rather than
given a confident wrong class. ``diagnose(photos)`` combines several photos
of one plant: the average of the recognised photos' probabilities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from toptune_core.data.images import ImageSource
from toptune_core.errors import ToptuneError
from toptune_core.methods import method_class
from toptune_core.methods.photos import Photos
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.trust.familiarity import FILE as FAMILIARITY_FILE
from toptune_core.trust.familiarity import STRICTNESS, Familiarity, FamiliarityCheck

#: Most photos of one plant combined into one diagnosis.
MAX_PHOTOS_PER_PLANT = 6


@dataclass
class Prediction:
    classes: list[str]
    probabilities: np.ndarray  # aligned with classes
    seconds: float
    familiarity: Optional[Familiarity] = None  # None for runs recorded before the check existed

    @property
    def recognised(self) -> bool:
        return self.familiarity is None or self.familiarity.recognised

    @property
    def label(self) -> str:
        return self.classes[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def top(self, k: Optional[int] = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities)[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]

    def as_dict(self, path: str) -> dict:
        """The ``predict --json`` entry: label is None when the photo is not recognised."""
        fam = self.familiarity
        return {"path": path, "label": self.label if self.recognised else None, "unknown": not self.recognised,
                "confidence": self.confidence, "familiarity": None if fam is None else fam.familiarity,
                "top": [[c, p] for c, p in self.top(None)],
                "nearest": [] if fam is None else [[p, c, d] for p, c, d in fam.nearest]}


@dataclass
class Diagnosis:
    """Several photos of one plant: one combined answer, and each photo's own verdict."""

    predictions: list[Prediction]
    classes: list[str]
    probabilities: Optional[np.ndarray] = None  # average over the recognised photos; None if none was
    errors: list[tuple[int, str]] = field(default_factory=list)  # (photo index, why it could not be read)

    @property
    def recognised(self) -> bool:
        return self.probabilities is not None

    @property
    def label(self) -> Optional[str]:
        return None if self.probabilities is None else self.classes[int(self.probabilities.argmax())]

    @property
    def n_recognised(self) -> int:
        return sum(p.recognised for p in self.predictions if p is not None)


class Predictor:
    """A loaded model from one run; ``predict(photo)`` gives class probabilities and the familiarity verdict.

    ``strictness``: "strict", "normal" (default) or "lenient", the share of
    photos like the training photos the check accepts (``STRICTNESS``).
    Loading a top-tuned run takes a fraction of a second (ONNX Runtime on the
    backbone's checked graph, ``portable.top``); each prediction after that
    some milliseconds plus decoding the photo.
    """

    def __init__(self, run: RunRecord, estimator, familiarity: Optional[FamiliarityCheck] = None):
        self.run, self.estimator, self.check = run, estimator, familiarity
        self.classes = list(estimator.classes_)

    @classmethod
    def from_run(cls, run_id: str, store: Optional[RunStore] = None, extractor=None, settings=None) -> "Predictor":
        """The run's model and familiarity check; ``extractor``: an already loaded ``FeatureExtractor`` to
        share (the dashboard's), ``settings``: where exported graphs are kept (default: the environment's)."""
        store = store or RunStore()
        run = store.get(run_id)
        if run.status != "completed":
            raise ToptuneError(f"Run {run.id} is {run.status}, not completed; choose a completed run.")
        estimator = None
        if run.method == "toptune":
            from toptune_core.portable.top import PortableTopTuner

            estimator = PortableTopTuner.from_run(store, run, extractor=extractor, settings=settings)
        if estimator is None:
            estimator = method_class(run.method).from_run(store, run, extractor=extractor)
        check = None
        if (store.run_dir(run.id) / FAMILIARITY_FILE).exists():
            check = FamiliarityCheck.load(store.model_file(run.id, FAMILIARITY_FILE))
        return cls(run, estimator, check)

    def predict(self, source: ImageSource, *, strictness: str = "normal", n_nearest: int = 5) -> Prediction:
        """Probabilities, familiarity and nearest training photos for one photo (path, bytes or file object).
        Unreadable photos raise ImageError."""
        if strictness not in STRICTNESS:
            raise ToptuneError(f"Unknown strictness '{strictness}'. Choose one of: {', '.join(STRICTNESS)}.")
        start = time.perf_counter()
        photo = Photos([source], self.estimator.embed(Photos([source])))
        proba = np.asarray(self.estimator.predict_proba(photo)[0], dtype=np.float64)
        fam = None
        if self.check is not None:
            fam = self.check.check(photo.features, accept=STRICTNESS[strictness], n_nearest=n_nearest)[0]
        return Prediction(self.classes, proba, time.perf_counter() - start, fam)

    def diagnose(self, sources: Sequence[ImageSource], *, strictness: str = "normal") -> Diagnosis:
        """Up to ``MAX_PHOTOS_PER_PLANT`` photos of one plant: each photo's verdict, and the average of the
        recognised photos' probabilities as the combined answer. Unreadable photos are reported, not fatal."""
        from toptune_core.errors import ImageError

        if not 1 <= len(sources) <= MAX_PHOTOS_PER_PLANT:
            raise ToptuneError(f"Give 1 to {MAX_PHOTOS_PER_PLANT} photos of one plant (got {len(sources)}).")
        predictions: list[Optional[Prediction]] = []
        errors = []
        for i, src in enumerate(sources):
            try:
                predictions.append(self.predict(src, strictness=strictness))
            except ImageError as e:
                predictions.append(None)
                errors.append((i, str(e)))
        recognised = [p.probabilities for p in predictions if p is not None and p.recognised]
        combined = np.mean(recognised, axis=0) if recognised else None
        return Diagnosis(predictions, self.classes, combined, errors)
