"""The automatic choice of top classifier, by the estimate for new photos (``model_selection``).

``AutoClassifier`` scores each candidate by cross-validation on the photos it is given to fit on, which are the
training photos (the experiment never hands it a held-out photo): stratified k folds over the groups it is given
(the session groups of ``data.groups``: photos of one plant or session, and all views of a photo, in one fold),
each left-out photo scored by its view-averaged probabilities. Candidates are listed cheapest first and the rule
of ``model_selection.choose`` takes the cheapest within the estimate's noise of the best; it is refitted on all
the photos. A candidate with its own internal choice (the kernel's width and
penalty) makes it inside each fold's training part: the scores are of the whole procedure, nested.

It is fitted on training rows (``features.views.flatten``: each photo's ``n_views`` views, consecutive, sharing
the photo's group), as every top classifier is.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from toptune_core.methods.choices import CLASSIFIERS, fit_classifier, make_candidate
from toptune_core.model_selection import N_SPLITS, RULE, choose, estimate, group_folds
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter, check_cancel

#: Cheapest first (fit time on the full iBean set's training photos with 8 views: README).
CANDIDATES = ("logreg", "rf", "kernel")


def cv_folds(y: np.ndarray, groups: Optional[Sequence], n_splits: int, seed: int) -> list[tuple]:
    """Folds over training rows: ``model_selection.group_folds`` of the rows' groups (a photo's views, which share
    its group, stay together)."""
    return group_folds(y, groups, n_splits, seed)


class AutoClassifier(ClassifierMixin, BaseEstimator):
    """Picks among ``candidates`` (cheapest first) by the estimate and its rule, and refits the winner.

    Fitted: ``chosen_`` (the key), ``best_estimator_``, ``cv_table_`` (one row per candidate: mean accuracy, its
    standard error, fold accuracies, mean fit seconds per fold, chosen), ``cv_seconds_``, ``refit_seconds_``.
    """

    _fits_with_progress = True

    def __init__(self, candidates: Sequence[str] = CANDIDATES, n_splits: int = N_SPLITS, random_state: int = 0,
                 n_views: int = 1):
        self.candidates = candidates
        self.n_splits = n_splits
        self.random_state = random_state
        self.n_views = n_views

    def fit(self, X, y, groups: Optional[Sequence] = None, *, progress: Optional[ProgressCallback] = None,
            should_cancel: Optional[CancelCheck] = None) -> "AutoClassifier":
        X, y = np.asarray(X), np.asarray(y)
        v = self.n_views
        F, y_photo = X.reshape(-1, v, X.shape[1]), y[::v]  # rows are photo-major: a photo's views together
        g_photo = None if groups is None else np.asarray(groups)[::v]
        start = time.perf_counter()
        folds = group_folds(y_photo, g_photo, self.n_splits, self.random_state)
        meter = ProgressMeter("cv", len(self.candidates) * len(folds) + 1, progress, "fits", should_cancel)
        meter.update(0, "estimating each classifier on new photos (cross-validation over the training photos)")
        rows = []
        for key in self.candidates:
            done = []

            def fit(clf, Xf, yf, gf, key=key, done=done):
                fit_classifier(clf, Xf, yf, groups=gf)
                done.append(1)
                meter.update(len(rows) * len(folds) + len(done), f"{CLASSIFIERS[key].label}, fold {len(done)} of "
                                                                 f"{len(folds)}")

            row = estimate(lambda key=key: make_candidate(key, random_state=self.random_state), F, y_photo, folds,
                           groups=g_photo, fit=fit, check=lambda: check_cancel(should_cancel, "The automatic choice"))
            rows.append({"classifier": key, "label": CLASSIFIERS[key].label, **row,
                         "std_accuracy": float(np.std(row["fold_accuracies"]))})
        best = choose(rows)
        for i, r in enumerate(rows):
            r["chosen"] = i == best
        self.cv_table_, self.chosen_, self.n_folds_ = rows, rows[best]["classifier"], len(folds)
        self.cv_seconds_ = time.perf_counter() - start
        self.best_estimator_ = make_candidate(self.chosen_, random_state=self.random_state)
        self.refit_seconds_ = fit_classifier(self.best_estimator_, X, y, groups=groups)
        meter.update(meter.total, f"chose {rows[best]['label']}")
        self.classes_, self.n_features_in_ = self.best_estimator_.classes_, X.shape[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.best_estimator_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.best_estimator_.predict(X)

    def describe(self) -> dict:
        """The CV table and what was chosen (JSON-ready)."""
        inner = getattr(self.best_estimator_, "describe", None)
        return {"chosen": self.chosen_,
                "cv": f"the estimate for new photos: stratified {self.n_folds_}-fold cross-validation over the "
                      "training photos, photos of one likely plant or session (and all views of a photo) in one "
                      f"fold; rule: {RULE}",
                "cv_table": self.cv_table_, "cv_seconds": round(self.cv_seconds_, 3),
                "refit_seconds": round(self.refit_seconds_, 3), **({"chosen_settings": inner()} if inner else {})}
