"""The leakage check: near-duplicate photos across the train/test split, for every run and for the Data page.

The reference backbone's features (``data.duplicates.REFERENCE_BACKBONE``,
from the feature cache, extracted once on a miss) decide which photos are
near-duplicates; ``data.duplicates`` holds the rule and the report,
``data.split`` the grouped split that keeps them on one side. This module
gets the features and puts the pieces together, for ``experiment`` (every
run, both methods) and for the Data page (before any run).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from toptune_core.data.duplicates import REFERENCE_BACKBONE, leakage_report
from toptune_core.data.groups import session_groups
from toptune_core.data.split import split_for
from toptune_core.methods.base import PhotoTable
from toptune_core.progress import CancelCheck, ProgressCallback


def reference_features(dataset, ok: np.ndarray, *, table: Optional[PhotoTable] = None, backbone: str = "",
                       cache=None, extractor=None, progress: Optional[ProgressCallback] = None,
                       should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
    """The reference backbone's features of the photos ``ok`` selects, in dataset order: (n, n_views, dim), of
    which the near-duplicate rule reads the first view (the photo as it is, in every view set).

    A top-tuning ``table`` already read by ``extractor`` at the reference backbone's own input size is used as
    it is; otherwise the features come from ``cache``: the reference model's entry (whatever views it holds, the
    first is the photo as it is), else one view extracted into it. A photo the reference could not read gets
    NaN (nobody's near-duplicate).
    """
    reference = reference_extractor()
    same_model = extractor is not None and extractor.model_identity == reference.model_identity
    if table is not None and table.features is not None and backbone == REFERENCE_BACKBONE and same_model:
        return table.features
    from toptune_core.features.cache import FeatureCache, get_features

    cache = cache or FeatureCache()
    fs = get_features(dataset, reference_extractor(extractor), cache, progress=progress, should_cancel=should_cancel)
    return fs.entry.full_matrix()[np.asarray(ok, dtype=bool)]


def reference_extractor(extractor=None):
    """The extractor of the near-duplicate reference: ``REFERENCE_BACKBONE``, one view, at the backbone's own input
    size, where the near-duplicate threshold was measured (``extractor``'s loaded model when it is that backbone)."""
    from toptune_core.backbones.catalogue import get_backbone
    from toptune_core.features.extractor import FeatureExtractor

    reference = FeatureExtractor(REFERENCE_BACKBONE, views="1", resolution=get_backbone(REFERENCE_BACKBONE).input_size)
    if extractor is not None and extractor.backbone == REFERENCE_BACKBONE:
        reference = extractor.reconfigured(views="1", data_config=reference.data_config)
    return reference


def reference_comes_first(split: str, estimator) -> bool:
    """Whether a run needs the reference features before its first model: a grouped split is cut from the session
    groups, and a fit that reads groups (``PhotoEstimator.fits_with_groups``) needs them. Otherwise a progressive
    run fits its first model without them and reads them after it, for the final model and its report."""
    return split == "grouped" or estimator.fits_with_groups()


def run_reference(estimator, datasets: list, tables: list[PhotoTable], progress=None, should_cancel=None
                  ) -> tuple[np.ndarray, float]:
    """Reference features of a run's readable photos (training folder, then test folder) and the seconds taken."""
    start = time.perf_counter()
    cache = getattr(estimator, "cache", None)
    extractor = getattr(estimator, "extractor", None)
    parts = [reference_features(ds, t.ok, table=t, backbone=estimator.backbone,
                                cache=cache, extractor=extractor, progress=progress, should_cancel=should_cancel)
             for ds, t in zip(datasets, tables)]
    return np.concatenate(parts), time.perf_counter() - start


def data_leakage(dataset, *, seed: int, test_size: float, split: str = "random", cache=None, extractor=None,
                 progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None) -> dict:
    """The near-duplicate report of ``dataset`` under the split settings, before any run (the Data page).

    Its ``examples`` (up to 48 pairs across the split, most similar first) are for showing side by side.
    """
    ok = np.ones(len(dataset), dtype=bool)
    features = reference_features(dataset, ok, cache=cache, extractor=extractor, progress=progress,
                                  should_cancel=should_cancel)
    ok = ~np.isnan(features.reshape(len(features), -1)).any(axis=1)
    features = features[ok]
    groups = session_groups(features) if split == "grouped" else None
    _, paths, chosen = split_for(dataset, None, ok, None, seed=seed, test_size=test_size, split=split, groups=groups)
    relpath_of = dict(zip(map(str, dataset.paths), dataset.relpaths))  # a version's added photos lie elsewhere
    names = [relpath_of[str(p)] for p in paths]
    report = leakage_report(features, chosen.train_idx, chosen.test_idx, names, examples=48)
    report["split"] = chosen.method
    return report
