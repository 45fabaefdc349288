"""The familiarity check: does a new photo look like the photos this model was trained on?

A classifier's own confidence cannot tell: on our features, the top class
probability separated held-out bean photos from rice-leaf photos worse than
chance. The distance from a photo's backbone features to its k-th nearest
training photo, on L2-normalised features (Sun et al., ICML 2022), separates
them well. ``FamiliarityCheck`` keeps the normalised features of the training
photos and a calibration of that distance:

* calibration uses the training photos only: they are cut into ``folds``
  stratified parts; each part's photos are scored against the other parts
  (so a photo never finds itself), and those distances are the reference
  distribution. Held-out photos are never used;
* a photo's **familiarity** is the share of calibration distances at least
  as large as its own (1.0: closer to the training photos than any training
  photo is; 0.05: as far as the 5 % least typical training photos);
* a photo is **recognised** when its familiarity is at least ``1 - accept``
  (``accept`` = share of in-scope photos to accept: strict 0.90, normal
  0.95, lenient 0.99).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: Strictness levels: the share of photos like the training photos that each accepts.
STRICTNESS = {"strict": 0.90, "normal": 0.95, "lenient": 0.99}
DEFAULT_STRICTNESS = "normal"
FILE = "familiarity.npz"


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """One unit vector per photo: rows of (n, dim) normalised; (n, n_views, dim) features give each photo's
    ``features.views.photo_embedding`` (the mean of its normalised views)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 3:
        from toptune_core.features.views import photo_embedding

        return photo_embedding(X)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def _kth_distances(queries: np.ndarray, reference: np.ndarray, k: int, n_nearest: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k-th nearest distance, indices of the ``n_nearest`` nearest, their distances) for normalised rows."""
    k = max(1, min(k, len(reference)))
    keep = max(k, n_nearest)
    d_all, i_all = [], []
    for start in range(0, len(queries), 512):  # bounded memory: 512 x n_reference distances at a time
        q = queries[start:start + 512]
        sq = np.clip(2.0 - 2.0 * (q @ reference.T), 0.0, None)  # |a-b|^2 for unit vectors
        idx = np.argpartition(sq, keep - 1, axis=1)[:, :keep]
        part = np.take_along_axis(sq, idx, axis=1)
        order = np.argsort(part, axis=1)
        i_all.append(np.take_along_axis(idx, order, axis=1))
        d_all.append(np.sqrt(np.take_along_axis(part, order, axis=1)))
    d = np.concatenate(d_all) if d_all else np.zeros((0, keep))
    i = np.concatenate(i_all) if i_all else np.zeros((0, keep), dtype=int)
    return d[:, k - 1], i[:, :n_nearest], d[:, :n_nearest]


@dataclass
class Familiarity:
    """The check's answer for one photo."""

    familiarity: float  # share of training photos (calibration) at least this far from their neighbours
    distance: float  # to the k-th nearest training photo
    recognised: bool
    nearest: list[tuple[str, str, float]]  # (training photo path, its class, distance)


class FamiliarityCheck:
    """k-nearest-neighbour familiarity on L2-normalised features, calibrated on training photos only."""

    def __init__(self, k: int = 10, accept: float = STRICTNESS[DEFAULT_STRICTNESS], folds: int = 5, seed: int = 0):
        self.k = k
        self.accept = accept
        self.folds = folds
        self.seed = seed

    def fit(self, X: np.ndarray, labels: Sequence[int], paths: Sequence[str], classes: Sequence[str]
            ) -> "FamiliarityCheck":
        """Remember the training photos' features and calibrate the distance on them alone."""
        Z = l2_normalise(X)
        labels = np.asarray(labels, dtype=np.int64)
        folds = max(2, min(self.folds, len(Z)))
        rng = np.random.default_rng(self.seed)
        fold_of = np.empty(len(Z), dtype=np.int64)
        for c in np.unique(labels):  # stratified: each class spread over the folds
            members = rng.permutation(np.flatnonzero(labels == c))
            fold_of[members] = np.arange(len(members)) % folds
        # A class with fewer training photos than k could never be recognised (its photos' k-th nearest training
        # photo would be of another kind): k is at most the smallest class's count (5 field photos of a new class).
        self.k_ = max(1, min(self.k, int(np.unique(labels, return_counts=True)[1].min())))
        calibration = np.empty(len(Z), dtype=np.float32)
        for f in range(folds):
            inside = fold_of == f
            if inside.all() or not inside.any():
                continue
            calibration[inside] = _kth_distances(Z[inside], Z[~inside], self.k_)[0]
        self.reference_ = Z
        self.labels_ = labels
        self.paths_ = [str(p) for p in paths]
        self.classes_ = [str(c) for c in classes]
        self.calibration_ = np.sort(calibration)
        self.threshold_ = self.threshold(self.accept)
        return self

    def threshold(self, accept: float) -> float:
        """The largest k-NN distance still recognised when ``accept`` of the calibration photos are."""
        return float(np.quantile(self.calibration_, accept))

    def familiarity(self, distances: np.ndarray) -> np.ndarray:
        """Share of calibration distances >= each distance."""
        below = np.searchsorted(self.calibration_, np.asarray(distances), side="left")
        return 1.0 - below / len(self.calibration_)

    def check(self, X: np.ndarray, *, accept: Optional[float] = None, n_nearest: int = 5) -> list[Familiarity]:
        """The familiarity, verdict and nearest training photos of each row of ``X``."""
        threshold = self.threshold(self.accept if accept is None else accept)
        dist, idx, near_d = _kth_distances(l2_normalise(X), self.reference_, self.k_, n_nearest)
        fam = self.familiarity(dist)
        return [Familiarity(float(fam[j]), float(dist[j]), bool(dist[j] <= threshold),
                            [(self.paths_[i], self.classes_[self.labels_[i]], float(d))
                             for i, d in zip(idx[j], near_d[j])]) for j in range(len(dist))]

    def recognised(self, X: np.ndarray, accept: Optional[float] = None) -> np.ndarray:
        threshold = self.threshold(self.accept if accept is None else accept)
        return _kth_distances(l2_normalise(X), self.reference_, self.k_)[0] <= threshold

    def describe(self) -> dict:
        """What the run record says about the check."""
        return {"score": "knn", "k": self.k_, "accept": self.accept, "threshold": self.threshold_,
                "thresholds": {name: self.threshold(a) for name, a in STRICTNESS.items()},
                "calibration": (f"{self.folds}-fold cross-validation on the {len(self.reference_)} training photos "
                                "only (each scored against the other folds); held-out photos never used"),
                "distance": "k-th nearest training photo, Euclidean on L2-normalised backbone features",
                "kept": ("no other score tried (shrunk Mahalanobis, residual, classifier margin, class k-NN, patch "
                         "nearest neighbours) refused more of a left-out disease in both disease folds: README, "
                         "'A disease it never learned: what was tried'")}

    def save(self, folder: Path) -> list[str]:
        np.savez(Path(folder) / FILE, reference=self.reference_.astype(np.float32), labels=self.labels_,
                 paths=np.asarray(self.paths_, dtype=str), classes=np.asarray(self.classes_, dtype=str),
                 calibration=self.calibration_, params=np.asarray([self.k_, self.accept, self.folds, self.seed]))
        return [FILE]

    @classmethod
    def load(cls, path: Path) -> "FamiliarityCheck":
        with np.load(path, allow_pickle=False) as z:
            k, accept, folds, seed = z["params"].tolist()
            check = cls(int(k), float(accept), int(folds), int(seed))
            check.k_ = check.k
            check.reference_, check.labels_ = z["reference"], z["labels"]
            check.paths_, check.classes_ = z["paths"].tolist(), z["classes"].tolist()
            check.calibration_ = z["calibration"]
        check.threshold_ = check.threshold(check.accept)
        return check


def held_out_report(check: FamiliarityCheck, X_test: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Coverage (share recognised), accuracy on recognised photos and with no rejection, per strictness."""
    correct = np.asarray(y_true) == np.asarray(y_pred)
    out = {"accuracy_all": float(correct.mean()) if len(correct) else None, "by_strictness": {}}
    for name, accept in STRICTNESS.items():
        rec = check.recognised(X_test, accept)
        out["by_strictness"][name] = {
            "accept": accept, "coverage": float(rec.mean()) if len(rec) else None,
            "accuracy_recognised": float(correct[rec].mean()) if rec.any() else None, "n_refused": int((~rec).sum())}
    normal = out["by_strictness"][DEFAULT_STRICTNESS]
    out["coverage"], out["accuracy_recognised"] = normal["coverage"], normal["accuracy_recognised"]
    return out
