"""Photos to check: training photos whose label looks wrong, ranked, from out-of-fold probabilities.

A photo's **out-of-fold probabilities** come from a model that never saw it:
the photos are cut into stratified folds, every view of a photo and every
photo of a near-duplicate group (``data.duplicates.duplicate_groups``) in one
fold, and a logistic regression on the photos' embeddings (their L2-normalised
views averaged) trained on the other folds gives each class's probability.
They are produced here, once (``out_of_fold_proba``), for anything that needs
a held-out opinion of the training photos.

A photo is a **suspect** when the out-of-fold model gives another class a
higher probability than the given one. Suspects are ranked by cleanlab's
normalised-margin label-quality score (``cleanlab.rank``), lowest first, and
each gets the most probable other class as its suggestion; confident learning
(``cleanlab.filter.find_label_issues``) estimates how many labels are wrong.
In planted-noise trials (``bench-labels``; README, "Photos to check")
cleanlab's ranking found as many planted wrong labels as the plain ranking
by the probability of the given class (on the full set a fraction more), so
cleanlab is used.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from toptune_core.errors import DatasetError
from toptune_core.features.views import photo_embedding
from toptune_core.model_selection import group_folds
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter, check_cancel
from toptune_core.system import one_blas_thread

FOLDS = 5
#: Inverse regularisation of the out-of-fold logistic regression (on unit-length features).
C = 10.0


@dataclass(frozen=True)
class Suspect:
    """A training photo whose label looks wrong: its path (relative to the dataset folder), the class it is
    filed under, the class the out-of-fold model suggests, and how suspect it is (0..1, higher: more)."""

    path: str
    given: str
    suggested: str
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelCheck:
    """The result of ``check_labels``: suspects (most suspect first) and what the check looked at."""

    suspects: list[Suspect]
    n_photos: int  # photos of the dataset
    n_checked: int  # readable photos that took part
    n_likely_wrong: Optional[int] = None  # confident learning's count of wrong labels (``likely_wrong``)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    backbone: str = ""
    views: str = ""
    resolution: int = 0  # input side of the features, pixels
    extract_seconds: float = 0.0  # features: the extraction's cost (0 when they came from the cache)
    check_seconds: float = 0.0  # folds, fits and ranking
    cache_hit: Optional[bool] = None
    paths: list[str] = field(default_factory=list, repr=False)  # the checked photos, for ``nearest``
    labels: Optional[np.ndarray] = field(default=None, repr=False)  # their given classes (indices of ``classes``)
    classes: list[str] = field(default_factory=list, repr=False)
    embeddings: Optional[np.ndarray] = field(default=None, repr=False)  # (n_checked, dim) ``photo_embedding``

    def nearest(self, path: str, cls: str, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` photos filed under ``cls`` most like the photo ``path`` (cosine similarity of the photo
        embeddings, most alike first; the photo itself left out): evidence beside a suspect."""
        i = self.paths.index(path)
        candidates = np.flatnonzero((self.labels == self.classes.index(cls)) & (np.arange(len(self.paths)) != i))
        sims = self.embeddings[candidates] @ self.embeddings[i]
        best = candidates[np.argsort(-sims, kind="stable")[:k]]
        return [(self.paths[j], float(self.embeddings[j] @ self.embeddings[i])) for j in best]

    def as_dict(self) -> dict:
        return {"suspects": [s.as_dict() for s in self.suspects], "n_photos": self.n_photos,
                "n_checked": self.n_checked, "n_likely_wrong": self.n_likely_wrong,
                "unreadable": [list(u) for u in self.unreadable],
                "backbone": self.backbone, "views": self.views, "resolution": self.resolution,
                "extract_seconds": self.extract_seconds,
                "check_seconds": self.check_seconds, "cache_hit": self.cache_hit}


def out_of_fold_proba(features: np.ndarray, labels: Sequence[int], groups: Optional[Sequence[int]] = None, *,
                      n_classes: Optional[int] = None, folds: int = FOLDS, seed: int = 0,
                      progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None
                      ) -> np.ndarray:
    """(n, n_classes) probabilities of each photo from a model trained on the other folds: stratified, each group
    of ``groups`` (None: each photo) in one fold (``model_selection.group_folds``; k lowered to what the smallest
    class allows).

    ``features``: (n, dim) or (n, n_views, dim). Each photo is one row, ``photo_embedding`` (the mean of its
    L2-normalised views, normalised again), so a photo's views always travel together; on the full iBean set
    this ranked planted wrong labels as well as a model trained on every view (``bench-labels``: 56.0 against
    56.2 of 60 in the first 120) in a tenth of the time (0.9 s against 9.5 s). A class missing from a
    fold's training photos gets probability 0 for that fold's photos."""
    from sklearn.linear_model import LogisticRegression

    X = photo_embedding(features)
    y = np.asarray(labels, dtype=np.int64)
    if len(X) != len(y):
        raise ValueError(f"{len(X)} photos' features but {len(y)} labels")
    counts = np.bincount(y)[np.unique(y)]
    if len(counts) < 2 or counts.min() < 2:
        raise DatasetError("Checking labels needs at least 2 readable photos of each of at least 2 classes; "
                           "add photos.")
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    splits = group_folds(y, groups, n_splits=folds, seed=seed)
    proba = np.zeros((len(y), n_classes))
    meter = ProgressMeter("check labels", len(splits), progress, unit="folds", should_cancel=should_cancel)
    with one_blas_thread():
        for f, (train, test) in enumerate(splits):
            check_cancel(should_cancel, "The label check")
            model = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(X[train], y[train])
            proba[np.ix_(test, model.classes_)] = model.predict_proba(X[test])
            meter.update(f + 1)
    return proba


def rank_suspects(proba: np.ndarray, labels: Sequence[int], paths: Sequence[str], classes: Sequence[str],
                  *, skip: Sequence[str] = ()) -> list[Suspect]:
    """The photos whose given class is not the most probable out-of-fold, most suspect first: ranked by
    cleanlab's normalised margin (the probability of the given class minus the highest other one), ``score``
    = 1 - that label-quality score (0.5 .. 1). ``skip``: paths not to list (reviewed and kept as they are)."""
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=np.int64)
    quality = get_label_quality_scores(y, proba, method="normalized_margin")
    others = proba.copy()
    others[np.arange(len(y)), y] = -np.inf
    suggested = others.argmax(axis=1)
    flagged = np.flatnonzero(others.max(axis=1) > proba[np.arange(len(y)), y])
    skip = set(skip)
    order = flagged[np.argsort(quality[flagged], kind="stable")]
    return [Suspect(paths[i], classes[y[i]], classes[suggested[i]], round(float(1.0 - quality[i]), 4))
            for i in order if paths[i] not in skip]


def likely_wrong(proba: np.ndarray, labels: Sequence[int]) -> Optional[int]:
    """How many labels confident learning (cleanlab's ``filter.find_label_issues``) finds wrong: an estimate of
    how far down the suspects are worth checking. None when a class has under two photos (it cannot tell)."""
    from cleanlab.filter import find_label_issues

    y = np.asarray(labels, dtype=np.int64)
    if np.bincount(y, minlength=proba.shape[1]).min() < 2:
        return None
    return int(find_label_issues(y, proba, n_jobs=1).sum())


def check_labels(dataset, *, backbone: Optional[str] = None, views: Optional[str] = None,
                 resolution: Optional[int] = None, seed: int = 0, cache=None, extractor=None,
                 skip: Sequence[str] = (), progress: Optional[ProgressCallback] = None,
                 should_cancel: Optional[CancelCheck] = None) -> LabelCheck:
    """The photos of ``dataset`` to check: features from the cache (extracted on a miss, with progress),
    near-duplicate groups, out-of-fold probabilities, the ranking. ``extractor`` (a loaded
    ``FeatureExtractor``) replaces ``backbone``/``views``/``resolution``."""
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
    from toptune_core.data.duplicates import duplicate_groups
    from toptune_core.features.cache import FeatureCache, get_features
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.leakage import reference_features

    cache = cache or FeatureCache()
    if extractor is None:
        extractor = FeatureExtractor(backbone or DEFAULT_BACKBONE, views=views, resolution=resolution)
    fs = get_features(dataset, extractor, cache, progress=progress, should_cancel=should_cancel)
    entry = fs.entry
    ok = np.asarray(entry.ok, dtype=bool)
    reference = reference_features(dataset, ok, cache=cache, extractor=extractor, progress=progress,
                                   should_cancel=should_cancel)
    start = time.perf_counter()
    labels = dataset.labels[ok]
    proba = out_of_fold_proba(entry.features, labels, duplicate_groups(reference), n_classes=len(dataset.classes),
                              seed=seed, progress=progress, should_cancel=should_cancel)
    paths = [p for p, good in zip(dataset.relpaths, ok) if good]
    suspects = rank_suspects(proba, labels, paths, dataset.classes, skip=skip)
    return LabelCheck(suspects, len(dataset), int(ok.sum()), likely_wrong(proba, labels), list(entry.errors),
                      extractor.backbone, extractor.views, extractor.resolution,
                      0.0 if fs.cache_hit else entry.extract_seconds,
                      time.perf_counter() - start, fs.cache_hit, paths, labels, list(dataset.classes),
                      photo_embedding(entry.features))
