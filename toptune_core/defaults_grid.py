"""The grid behind the defaults: classifier x views x resolution, by the estimate for new photos and by a random split.

``defaults_grid`` reads (or extracts into the cache) one backbone's features for every view set and input
resolution asked for, makes the usual seeded random split (``data.split``), and for every top classifier gives:

* **the estimate** (``model_selection``): cross-validation over the session groups of the *training* photos
  (``data.groups``; the same folds for every cell, since the groups come from the reference backbone's
  features, which no setting changes), each photo scored by its view-averaged probabilities;
* **the random split**: the classifier trained on all the training photos and scored on the held-out ones, as a
  run does (``held_out_accuracy``), and its fit seconds;
* what extracting the features cost when they were extracted (``extract_seconds``, from the cache entry).

``choose`` (the estimate's rule) then picks the cell: the cheapest cell within the noise of the best one. Cells
are ordered by what every later run pays, the classifier's fit seconds on all the training photos (training
again after each change of the photos; extraction is paid once per photo, then cached), then by the backbone
work of that one extraction (views x (resolution / the backbone's own)^2 passes per photo). The held-out photos
take no part in the choice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toptune_core.errors import ToptuneError
from toptune_core.features import views as view_sets
from toptune_core.model_selection import RULE, choose, estimate, group_folds
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter, check_cancel


def defaults_grid(data: str | Path, backbone: str, *, classifiers: Sequence[str], view_names: Sequence[str],
                  resolutions: Sequence[Optional[int]], seed: int = 0, test_size: float = 0.25, cache=None,
                  progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None) -> dict:
    """Every cell's estimate, held-out accuracy and costs, the chosen cell and the rule (JSON-ready)."""
    from toptune_core.data.groups import session_groups
    from toptune_core.data.split import load_data, split_for
    from toptune_core.features.cache import FeatureCache
    from toptune_core.leakage import reference_features
    from toptune_core.methods.classifiers import CLASSIFIERS, fit_classifier, make_classifier
    from toptune_core.methods.toptuner import TopTuner

    unknown = [c for c in classifiers if c not in CLASSIFIERS or c == "auto"]
    if unknown:
        raise ToptuneError(f"Grid classifiers must be among {', '.join(k for k in CLASSIFIERS if k != 'auto')} "
                           f"(got {', '.join(unknown)}).")
    dataset, _ = load_data(data)
    cache = cache or FeatureCache()
    meter = ProgressMeter("grid", len(view_names) * len(resolutions) * len(classifiers), progress, "cells",
                          should_cancel)
    rows, folds, split, train, extractor = [], None, None, None, None
    for resolution in resolutions:
        for views in view_names:
            tuner = TopTuner(backbone, classifiers[0], seed, views=views, resolution=resolution, cache=cache,
                             extractor=extractor)
            table = tuner.read(dataset, progress=progress, should_cancel=should_cancel)
            extractor = tuner.extractor
            if folds is None:  # the split and the session groups: the same for every cell
                labels, _, split = split_for(dataset, None, table.ok, None, seed=seed, test_size=test_size)
                reference = reference_features(dataset, table.ok, table=table, backbone=backbone, cache=cache,
                                               extractor=extractor)
                train = split.train_idx
                groups = session_groups(reference[train])
                folds = group_folds(labels[train], groups, seed=seed)
                ok = table.ok
            elif not np.array_equal(table.ok, ok):
                raise ToptuneError("The photos readable at one resolution differ from another's; the grid needs the "
                                   "same photos in every cell.")
            F = view_sets.as_views(table.features)
            for key in classifiers:
                check_cancel(should_cancel, "The grid")
                meter.update(len(rows), f"{views} views at {extractor.resolution} px, {CLASSIFIERS[key].label}")

                def fit(clf, X, y, g):
                    fit_classifier(clf, X, y, groups=g)

                row = estimate(lambda key=key: make_classifier(key, random_state=seed), F[train], labels[train],
                               folds, groups=groups, fit=fit)
                clf = make_classifier(key, random_state=seed)
                X, rows_y, rows_g = view_sets.flatten(F[train], labels[train], groups)
                fit_seconds = fit_classifier(clf, X, rows_y, groups=rows_g)
                n, v, d = F[split.test_idx].shape
                proba = view_sets.average(clf.predict_proba(F[split.test_idx].reshape(n * v, d)), v)
                held_out = float(np.mean(np.asarray(clf.classes_)[proba.argmax(axis=1)] == labels[split.test_idx]))
                work = extractor.n_views * (extractor.resolution / extractor.spec.input_size) ** 2
                rows.append({"classifier": key, "views": views, "resolution": extractor.resolution, **row,
                             "passes_per_photo": round(work, 3),
                             "held_out_accuracy": held_out, "fit_seconds_all_training": fit_seconds,
                             "extract_seconds": table.cost_seconds})
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["fit_seconds_all_training"], rows[i]["passes_per_photo"]))
    chosen = order[choose([rows[i] for i in order])]
    for i, r in enumerate(rows):
        r["chosen"] = i == chosen
    meter.update(len(rows), "done")
    return {"backbone": backbone, "dataset": str(dataset.root), "seed": seed, "split": split.method,
            "n_train": int(len(split.train_idx)), "n_test": int(len(split.test_idx)),
            "n_session_groups": int(len(set(groups.tolist()))), "n_folds": len(folds), "rule": RULE,
            "order": "cells ordered by classifier fit seconds (paid by every later run), then backbone passes per "
                     "photo (views x (resolution / own)^2, paid once)",
            "rows": rows,
            "when": time.strftime("%Y-%m-%d %H:%M")}


def grid_table(grid: dict) -> str:
    """The grid as a Markdown table; ``**`` marks the chosen cell."""
    lines = [f"{grid['backbone']} on {grid['dataset']}: {grid['n_train']} training photos in "
             f"{grid['n_session_groups']} session groups, {grid['n_folds']} folds; held out: {grid['n_test']} "
             f"photos ({grid['split']})", "",
             "| classifier | views | resolution | estimate for new photos (± s.e.) | random split (held out) | "
             "classifier fit s | backbone passes per photo | feature extraction s | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in grid["rows"]:
        lines.append(f"| {r['classifier']} | {r['views']} | {r['resolution']} px | {r['mean_accuracy']:.3f} ± "
                     f"{r['std_error']:.3f} | {r['held_out_accuracy']:.3f} | {r['fit_seconds_all_training']:.2f} | "
                     f"{r['passes_per_photo']:g} | {r['extract_seconds']:.0f} | {'**chosen**' if r['chosen'] else ''} |")
    lines += ["", f"Rule: {grid['rule']}; {grid['order']}."]
    return "\n".join(lines)
