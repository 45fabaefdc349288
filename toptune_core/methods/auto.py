"""The automatic choice of top classifier: stratified k-fold cross-validation on the training photos only.

``AutoClassifier`` scores each candidate (Random Forest, logistic regression,
kernel ridge) by stratified k-fold cross-validation on the photos it is given
to fit on, which are the training photos (the experiment never hands it a
held-out photo), picks the most accurate (a tie goes to the first candidate,
never to a fit time, so the choice is repeatable), and refits
it on all of them. Photos given the same ``groups`` label (near-duplicates)
stay in one fold. A candidate with its own internal choice (the kernel's width
and penalty) makes it inside each fold's training part: the scores are of the
whole procedure, nested.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from toptune_core.errors import ToptuneError
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter

CANDIDATES = ("kernel", "logreg", "rf")  # a tie goes to the first: the one that measured best on the iBean sets


def cv_folds(y: np.ndarray, groups: Optional[Sequence], n_splits: int, seed: int) -> list[tuple]:
    """Seeded stratified k-fold splits of ``y`` (group-aware when ``groups`` has repeated labels)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    k = min(n_splits, smallest)
    if k < 2:
        raise ToptuneError("The automatic choice needs at least 2 training photos of every class for its "
                           "cross-validation; choose a classifier instead, or add photos.")
    dummy = np.zeros(len(y))
    if groups is not None and len(set(groups)) < len(groups):
        return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(dummy, y, groups))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(dummy, y))


class AutoClassifier(ClassifierMixin, BaseEstimator):
    """Picks among ``candidates`` by ``n_splits``-fold CV and refits the winner.

    Fitted: ``chosen_`` (the key), ``best_estimator_``, ``cv_table_`` (one row per candidate: mean and std
    of the fold accuracies, mean fit seconds per fold, chosen), ``cv_seconds_``, ``refit_seconds_``.
    """

    _fits_with_progress = True

    def __init__(self, candidates: Sequence[str] = CANDIDATES, n_splits: int = 5, random_state: int = 0):
        self.candidates = candidates
        self.n_splits = n_splits
        self.random_state = random_state

    def fit(self, X, y, groups: Optional[Sequence] = None, *, progress: Optional[ProgressCallback] = None,
            should_cancel: Optional[CancelCheck] = None) -> "AutoClassifier":
        from toptune_core.methods.classifiers import CLASSIFIERS, fit_classifier, make_classifier

        X, y = np.asarray(X), np.asarray(y)
        start = time.perf_counter()
        folds = cv_folds(y, groups, self.n_splits, self.random_state)
        meter = ProgressMeter("cv", len(self.candidates) * len(folds) + 1, progress, "fits", should_cancel)
        meter.update(0, "cross-validation on the training photos")
        rows = []
        for key in self.candidates:
            accuracies, seconds = [], []
            for tr, va in folds:
                clf = make_classifier(key, random_state=self.random_state)
                seconds.append(fit_classifier(clf, X[tr], y[tr], groups=_take(groups, tr)))
                accuracies.append(float(np.mean(clf.predict(X[va]) == y[va])))
                meter.update(meter_done(rows, accuracies, len(folds)), f"{CLASSIFIERS[key].label}, fold "
                                                                     f"{len(accuracies)} of {len(folds)}")
            rows.append({"classifier": key, "label": CLASSIFIERS[key].label,
                         "mean_accuracy": float(np.mean(accuracies)), "std_accuracy": float(np.std(accuracies)),
                         "fit_seconds": float(np.mean(seconds)), "fold_accuracies": accuracies})
        best = max(rows, key=lambda r: round(r["mean_accuracy"], 10))  # max keeps the first of equals
        for r in rows:
            r["chosen"] = r is best
        self.cv_table_, self.chosen_, self.n_folds_ = rows, best["classifier"], len(folds)
        self.cv_seconds_ = time.perf_counter() - start
        self.best_estimator_ = make_classifier(self.chosen_, random_state=self.random_state)
        self.refit_seconds_ = fit_classifier(self.best_estimator_, X, y, groups=groups)
        meter.update(meter.total, f"chose {best['label']}")
        self.classes_, self.n_features_in_ = self.best_estimator_.classes_, X.shape[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.best_estimator_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.best_estimator_.predict(X)

    def describe(self) -> dict:
        """The CV table and what was chosen (JSON-ready)."""
        inner = getattr(self.best_estimator_, "describe", None)
        return {"chosen": self.chosen_, "cv": f"stratified {self.n_folds_}-fold cross-validation on the training "
                                              "photos (near-duplicates kept in one fold)",
                "cv_table": self.cv_table_, "cv_seconds": round(self.cv_seconds_, 3),
                "refit_seconds": round(self.refit_seconds_, 3), **({"chosen_settings": inner()} if inner else {})}


def meter_done(rows: list, accuracies: list, n_folds: int) -> int:
    """Fits done so far: the finished candidates' folds and this one's."""
    return len(rows) * n_folds + len(accuracies)


def _take(groups: Optional[Sequence], idx: np.ndarray) -> Optional[np.ndarray]:
    return None if groups is None else np.asarray(groups)[idx]
