"""The honest limit of the familiarity check: what happens to a class the model never learned.

``unseen_class_report`` trains, for each class in turn, a top-tuned model on
the *other* classes' training photos (the usual seeded split), calibrates its
familiarity check on those training photos alone, and reports the share of
the left-out class's photos the check refuses (they would otherwise all get a
wrong class), beside the share of held-out photos of the learned classes it
accepts. Features come from the cache, so this takes seconds after one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.data.split import load_data, stratified_split
from toptune_core.methods.photos import Photos
from toptune_core.progress import CancelCheck, ProgressCallback
from toptune_core.trust.familiarity import STRICTNESS, FamiliarityCheck


def unseen_class_report(data: str | Path, *, backbone: str = DEFAULT_BACKBONE, classifier: str = "logreg",
                        seed: int = 0, test_size: float = 0.25, strictness: str = "normal", views=None,
                        resolution=None, extractor=None,
                        cache=None, progress: Optional[ProgressCallback] = None,
                        should_cancel: Optional[CancelCheck] = None) -> list[dict]:
    """One row per left-out class: refused share of its photos, coverage and accuracy on learned classes."""
    from toptune_core.methods.toptuner import TopTuner

    dataset, _ = load_data(data)
    reader = TopTuner(backbone, classifier, seed, views=views, resolution=resolution, extractor=extractor, cache=cache)
    table = reader.read(dataset, progress=progress, should_cancel=should_cancel)
    X, y = table.features, dataset.labels[table.ok]
    paths = np.asarray(dataset.paths, dtype=object)[table.ok]
    split = stratified_split(y, test_size=test_size, seed=seed)
    rows = []
    for left_out, name in enumerate(dataset.classes):
        train = split.train_idx[y[split.train_idx] != left_out]
        test = split.test_idx[y[split.test_idx] != left_out]
        unseen = np.flatnonzero(y == left_out)
        kept = [c for c in range(len(dataset.classes)) if c != left_out]
        remap = {c: i for i, c in enumerate(kept)}
        y_train = np.asarray([remap[c] for c in y[train]])
        model = TopTuner(backbone, classifier, seed, extractor=reader.extractor).fit(
            Photos(list(paths[train]), X[train]), y_train, [dataset.classes[c] for c in kept])
        check = FamiliarityCheck(seed=seed).fit(X[train], y_train, list(paths[train]), model.classes_)
        accept = STRICTNESS[strictness]
        in_scope = check.recognised(X[test], accept)
        pred = model.predict_proba(Photos(list(paths[test]), X[test])).argmax(axis=1)
        correct = pred == np.asarray([remap[c] for c in y[test]])
        rows.append({"left_out": name, "n_unseen": int(len(unseen)),
                     "refused_unseen": float((~check.recognised(X[unseen], accept)).mean()),
                     "coverage_learned": float(in_scope.mean()),
                     "accuracy_learned_recognised": float(correct[in_scope].mean()) if in_scope.any() else None})
    return rows
