"""Top classifiers trained on frozen backbone features.

The default is a Random Forest with scikit-learn's default hyper-parameters
(100 trees, Gini, sqrt features...), only ``random_state`` set; its fit reports
progress as trees are added in chunks. Logistic regression on standardised
features is the second choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from toptune_core.errors import ToptuneError
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter


@dataclass(frozen=True)
class ClassifierSpec:
    key: str
    label: str
    settings: str


CLASSIFIERS = {
    "rf": ClassifierSpec("rf", "Random Forest",
                         "scikit-learn defaults: 100 trees, Gini impurity, sqrt(features) per split, "
                         "bootstrap samples, unlimited depth; random_state = seed"),
    "logreg": ClassifierSpec("logreg", "Logistic regression",
                             "standardised features, L2 penalty C=1.0, lbfgs, max_iter=1000; random_state = seed"),
}


def make_classifier(kind: str = "rf", *, random_state: int = 0) -> BaseEstimator:
    """A fresh, unfitted top classifier of ``kind`` ("rf" or "logreg")."""
    if kind == "rf":
        # n_jobs only sets how many cores build trees; the model is the same as with scikit-learn's default.
        return RandomForestClassifier(random_state=random_state, n_jobs=-1)
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=random_state))
    raise ToptuneError(f"Unknown classifier '{kind}'. Choose one of: {', '.join(CLASSIFIERS)}.")


def fit_classifier(clf: BaseEstimator, X: np.ndarray, y: np.ndarray, *, progress: Optional[ProgressCallback] = None,
                   should_cancel: Optional[CancelCheck] = None, chunk: int = 10) -> float:
    """Fit ``clf`` on (X, y), reporting progress; returns the fit time in seconds.

    A Random Forest is grown ``chunk`` trees at a time (warm start), so the
    progress bar moves and a cancel takes effect between chunks.
    """
    start = time.perf_counter()
    if isinstance(clf, RandomForestClassifier):
        total = clf.n_estimators
        meter = ProgressMeter("fit", total, progress, "trees", should_cancel)
        meter.update(0)
        clf.set_params(warm_start=True)
        for n in range(min(chunk, total), total + chunk, chunk):
            clf.set_params(n_estimators=min(n, total))
            clf.fit(X, y)
            meter.update(min(n, total))
            if n >= total:
                break
        clf.set_params(warm_start=False)
    else:
        meter = ProgressMeter("fit", 1, progress, "steps", should_cancel)
        meter.update(0)
        clf.fit(X, y)
        meter.update(1)
    return time.perf_counter() - start


