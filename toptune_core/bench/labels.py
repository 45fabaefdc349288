"""``python -m toptune_core bench-labels``: how many planted wrong labels each ranking puts first, in one table.

For each seed, ``per_class`` photos of each class get the next class's label (in memory: features are per
photo, so this is what moving the files does, without touching them). Out-of-fold probabilities
(``trust.labels``: stratified group folds, near-duplicates together) are ranked four ways, and the table gives
how many planted photos each puts among its first ``2 x planted`` (mean and worst over the seeds), how many of
those get their true class as the suggestion, how long the list of suspects is and how many planted photos it
holds, and the out-of-fold time:

- the plain ranking: lowest out-of-fold probability of the given class first;
- cleanlab's normalised-margin label quality (``cleanlab.rank``; what ``check-labels`` uses);
- cleanlab's confident learning (``filter.find_label_issues``, ranked by self-confidence) first, then the rest
  (its list: the photos it flags);
- with views, the plain ranking from a model that trains on every view and averages them (the alternative to
  one embedding per photo).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from toptune_core.bench.report import markdown_table
from toptune_core.progress import ProgressCallback

USED = "cleanlab normalised margin (used)"


def plant(labels: np.ndarray, per_class: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels with ``per_class`` photos of each class given the next class, the indices of those photos)."""
    rng = np.random.default_rng(seed)
    y, planted = labels.copy(), []
    for c in range(n_classes):
        idx = rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        y[idx] = (c + 1) % n_classes
        planted.extend(idx.tolist())
    return y, np.asarray(planted)


def _every_view_proba(F: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Out-of-fold probabilities from a logistic regression trained on every view (one row each, unit length),
    a photo's probabilities the mean over its views."""
    from sklearn.linear_model import LogisticRegression

    from toptune_core.features.views import average, flatten
    from toptune_core.system import one_blas_thread
    from toptune_core.model_selection import group_folds
    from toptune_core.trust.labels import C

    unit = lambda X: X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)  # noqa: E731
    proba = np.zeros((len(y), n_classes))
    with one_blas_thread():
        for train, test in group_folds(y, groups, seed=seed):
            X, rows_y, _ = flatten(F[train], y[train])
            model = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(unit(X), rows_y)
            proba[np.ix_(test, model.classes_)] = average(model.predict_proba(unit(flatten(F[test])[0])), F.shape[1])
    return proba


def _disagreements(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The photos whose given class is not the most probable: the suspects ``check-labels`` lists."""
    return np.flatnonzero(proba.argmax(axis=1) != y)


def _rankings(proba: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each ranking's (order of all photos, the photos it lists as suspects)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    plain = np.argsort(proba[np.arange(len(y)), y], kind="stable")
    issues = find_label_issues(y, proba, return_indices_ranked_by="self_confidence", n_jobs=1)
    rest = plain[~np.isin(plain, issues)]
    listed = _disagreements(proba, y)
    return {"plain: out-of-fold p(given class)": (plain, listed),
            USED: (np.argsort(get_label_quality_scores(y, proba, method="normalized_margin"), kind="stable"), listed),
            "cleanlab find_label_issues first": (np.concatenate([issues, rest]).astype(int), issues)}


def bench_labels(dataset, features: np.ndarray, groups: np.ndarray, *, per_class: int, seeds: int,
                 progress: Optional[ProgressCallback] = None) -> dict:
    """The figures (JSON-ready): per ranking and seed, the planted photos among the first 2 x planted, their true
    class suggested, the suspects listed and the planted ones among them. ``groups``: near-duplicate groups."""
    from toptune_core.progress import ProgressMeter
    from toptune_core.trust.labels import out_of_fold_proba

    k = len(dataset.classes)
    rows: dict[str, dict] = {}
    meter = ProgressMeter("planted trials", seeds, progress, unit="seeds")
    for seed in range(seeds):
        y, planted = plant(dataset.labels, per_class, k, seed)
        start = time.perf_counter()
        proba = out_of_fold_proba(features, y, groups, n_classes=k, seed=seed)
        timed = {name: (order, listed, proba, time.perf_counter() - start)
                 for name, (order, listed) in _rankings(proba, y).items()}
        if features.ndim == 3 and features.shape[1] > 1:
            start = time.perf_counter()
            every = _every_view_proba(features, y, groups, k, seed)
            timed["plain, model trained on every view"] = (np.argsort(every[np.arange(len(y)), y], kind="stable"),
                                                           _disagreements(every, y), every,
                                                           time.perf_counter() - start)
        for name, (order, listed, p, seconds) in timed.items():
            found = planted[np.isin(planted, order[:2 * len(planted)])]
            others = p.copy()
            others[np.arange(len(y)), y] = -np.inf
            row = rows.setdefault(name, {"found": [], "true_class_suggested": [], "listed": [],
                                         "planted_listed": [], "seconds": []})
            row["found"].append(int(len(found)))
            row["true_class_suggested"].append(int((others[found].argmax(axis=1) == dataset.labels[found]).sum()))
            row["listed"].append(int(len(listed)))
            row["planted_listed"].append(int(np.isin(planted, listed).sum()))
            row["seconds"].append(seconds)
        meter.update(seed + 1)
    return {"n_photos": len(dataset), "n_classes": k, "planted": per_class * k, "first": 2 * per_class * k,
            "seeds": seeds, "views": int(features.shape[1]) if features.ndim == 3 else 1, "rankings": rows}


def labels_table(figures: dict) -> str:
    cells = [("ranking", f"planted in first {figures['first']} (mean)", "worst seed", "true class suggested (mean)",
              "suspects listed (mean)", "planted among them (mean)", "out-of-fold s (mean)")]
    for name, row in figures["rankings"].items():
        cells.append((name, f"{np.mean(row['found']):.1f} of {figures['planted']}", str(min(row["found"])),
                      f"{np.mean(row['true_class_suggested']):.1f}", f"{np.mean(row['listed']):.1f}",
                      f"{np.mean(row['planted_listed']):.1f}", f"{np.mean(row['seconds']):.2f}"))
    return markdown_table(cells)
