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
    heatmaps: Optional[dict] = None  # class -> (rows, cols) class-versus-others map (``explain``), when asked for
    heatmap_note: str = ""  # why there is no map, when one was asked for

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
                "nearest": [] if fam is None else [[p, c, d] for p, c, d in fam.nearest],
                **({"heatmaps": self.heatmaps, "heatmaps_note": self.heatmap_note} if self.heatmap_note or
                   self.heatmaps is not None else {})}


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

    def __init__(self, run: RunRecord, estimator, familiarity: Optional[FamiliarityCheck] = None,
                 store: Optional[RunStore] = None):
        self.run, self.estimator, self.check, self.store = run, estimator, familiarity, store
        self.classes = list(estimator.classes_)
        self._head: "Optional[tuple]" = None  # (explain.LinearHead or None, why none), read on first use

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
        return cls(run, estimator, check, store)

    def predict(self, source: ImageSource, *, strictness: str = "normal", n_nearest: int = 5,
                heatmaps: bool = False) -> Prediction:
        """Probabilities, familiarity and nearest training photos for one photo (path, bytes or file object);
        ``heatmaps``: also where on the photo each class's evidence lies (``explain``; recognised photos only).
        Unreadable photos raise ImageError."""
        if strictness not in STRICTNESS:
            raise ToptuneError(f"Unknown strictness '{strictness}'. Choose one of: {', '.join(STRICTNESS)}.")
        start = time.perf_counter()
        view_maps, note = None, ""
        if heatmaps:
            head, note = self.linear_head()
            if head is not None:
                view_maps = self._view_maps(source)
        features = view_maps.features if view_maps is not None else self.estimator.embed(Photos([source]))
        photo = Photos([source], features)
        proba = np.asarray(self.estimator.predict_proba(photo)[0], dtype=np.float64)
        fam = None
        if self.check is not None:
            fam = self.check.check(photo.features, accept=STRICTNESS[strictness], n_nearest=n_nearest)[0]
        maps = None
        if view_maps is not None:
            if fam is None or fam.recognised:
                from toptune_core.explain import heatmaps as class_heatmaps

                maps = class_heatmaps(self._head[0], view_maps.maps[0], view_maps.views, self.classes)
            else:
                note = "not recognised: no map is shown for a photo unlike the training photos"
        return Prediction(self.classes, proba, time.perf_counter() - start, fam, maps, note)

    def _view_maps(self, source: ImageSource):
        from toptune_core.features.featuremap import features_and_maps

        extractor = self.estimator.extractor
        return features_and_maps(extractor, extractor.load_pixels(source)[None])

    def linear_head(self) -> "tuple[Optional[object], str]":
        """(the run's top classifier as an ``explain.LinearHead``, "") or (None, why there is no exact map)."""
        if self._head is None:
            self._head = self._read_head()
        return self._head

    def _read_head(self) -> tuple:
        import json

        from toptune_core.explain import NO_MAP, linear_head
        from toptune_core.portable.top import CLASSIFIER_FILE, META_FILE

        if self.run.method != "toptune" or self.store is None:
            return None, "maps are made for top-tuned runs only (a frozen backbone and a linear top classifier)"
        folder = self.store.run_dir(self.run.id)
        if not ((folder / CLASSIFIER_FILE).exists() and (folder / META_FILE).exists()):
            return None, "this run has no ONNX top classifier to read the weights from"
        meta = json.loads(self.store.model_file(self.run.id, META_FILE).read_text())
        head = linear_head(self.store.model_file(self.run.id, CLASSIFIER_FILE).read_bytes(), meta["class_index"],
                           len(meta["classes"]))
        return (head, "") if head is not None else (None, f"{self.run.classifier}: {NO_MAP}")

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
