"""An estimate that predicts new photos, and the rule that chooses by it.

scikit-learn's ``model_selection`` is the anchor: splitters take the groups, the learner never sees them.

* ``group_folds``: stratified k-fold over the session groups (``data.groups``): photos of one plant or session,
  and therefore all views of one photo, are always in one fold.
* ``estimate``: a candidate's accuracy on the left-out folds, photo by photo (the probabilities averaged over
  each photo's views, as every prediction does), with the per-fold scores and their standard error.
* ``choose``: the one-standard-error rule (Hastie, Tibshirani and Friedman, ESL 7.10) with paired folds:
  candidates are listed cheapest first, and the cheapest whose mean accuracy is within the noise of the best
  one's is chosen, the noise being the standard error of their paired per-fold differences (the same folds for
  every candidate, so fold difficulty cancels). A difference within the noise is no reason to pay for the
  costlier model.

The estimate runs on the photos it is given; the experiment gives it training photos only, so the held-out
photos never take part in a choice.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np

from toptune_core.errors import ToptuneError
from toptune_core.features import views as view_sets

N_SPLITS = 5
RULE = ("the cheapest candidate whose mean fold accuracy is within one standard error of the paired per-fold "
        "differences of the best candidate's")


def group_folds(y: np.ndarray, groups: Optional[Sequence], n_splits: int = N_SPLITS, seed: int = 0) -> list[tuple]:
    """Seeded stratified k-fold splits of photos ``y`` keeping each group (``groups``; None: each photo alone)
    in one fold: ``StratifiedGroupKFold``, with k lowered to what the smallest class allows."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    k = min(n_splits, smallest)
    if k < 2:
        raise ToptuneError("The estimate needs at least 2 training photos of every class for its cross-validation; "
                           "add photos.")
    dummy = np.zeros(len(y))
    if groups is not None and len(set(np.asarray(groups).tolist())) < len(y):
        return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(dummy, y, groups))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(dummy, y))


def estimate(make: Callable[[], object], features: np.ndarray, y: np.ndarray, folds: list[tuple], *,
             groups: Optional[Sequence] = None, fit: Optional[Callable] = None,
             check: Optional[Callable[[], None]] = None) -> dict:
    """Fold accuracies of the classifier ``make()`` on photos (``features``: (n, dim) or (n, n_views, dim)).

    Each fold trains on every view of its training photos (a photo's views share its group of ``groups``, for a
    classifier's own inner cross-validation) and scores each left-out photo by its view-averaged probabilities.
    ``fit(clf, X, y, groups)`` fits (default ``clf.fit(X, y)``); ``check()`` runs between folds (cancel).
    Returns mean, standard error, per-fold accuracies and fit seconds."""
    F = view_sets.as_views(features)
    y = np.asarray(y)
    accuracies, seconds = [], []
    for train, test in folds:
        if check is not None:
            check()
        X, rows_y, rows_groups = view_sets.flatten(F[train], y[train],
                                                   None if groups is None else np.asarray(groups)[train])
        clf = make()
        start = time.perf_counter()
        if fit is None:
            clf.fit(X, rows_y)
        else:
            fit(clf, X, rows_y, rows_groups)
        seconds.append(time.perf_counter() - start)
        n, v, d = F[test].shape
        proba = view_sets.average(clf.predict_proba(F[test].reshape(n * v, d)), v)
        accuracies.append(float(np.mean(np.asarray(clf.classes_)[proba.argmax(axis=1)] == y[test])))
    scores = np.asarray(accuracies)
    return {"mean_accuracy": float(scores.mean()), "std_error": _sem(scores), "fold_accuracies": accuracies,
            "fit_seconds": float(np.mean(seconds))}


def _sem(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def choose(rows: Sequence[dict]) -> int:
    """The index of the chosen row by ``RULE``; ``rows`` are ordered cheapest first, each with ``fold_accuracies``
    over the same folds. Marks each row's ``gap_to_best`` and ``noise`` (the standard error of the paired gaps)."""
    if not rows:
        raise ToptuneError("Nothing to choose from.")
    best = max(range(len(rows)), key=lambda i: (rows[i]["mean_accuracy"] if "mean_accuracy" in rows[i]
                                                 else float(np.mean(rows[i]["fold_accuracies"])), -i))
    top = np.asarray(rows[best]["fold_accuracies"])
    chosen = None
    for i, row in enumerate(rows):
        gap = top - np.asarray(row["fold_accuracies"])
        noise = _sem(gap) if len(gap) > 1 else 0.0
        row["gap_to_best"], row["noise"] = float(gap.mean()), float(noise)
        if chosen is None and gap.mean() <= (noise if np.isfinite(noise) else 0.0) + 1e-12:
            chosen = i
    return best if chosen is None else chosen
