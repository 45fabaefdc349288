"""Top-tuning: frozen backbone features (cached) + a classifier, evaluated on held-out photos, recorded.

``run_toptuning`` is the whole pipeline behind the command line and the
dashboard's Top-tune page: scan the data, get features (from the cache when
possible), split, fit, evaluate on the held-out part, and record the run with
its fitted classifier. Feature-extraction time and classifier-fit time are
reported separately, so either "training time" can be shown honestly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.methods.classifiers import CLASSIFIERS, fit_classifier, make_classifier
from toptune_core.data.dataset import Dataset, Split, load_dataset, stratified_split, test_folder_split
from toptune_core.errors import Cancelled, DatasetError
from toptune_core.evaluation import evaluate, full_proba
from toptune_core.features.cache import FeatureCache, FeatureSet, get_features
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.progress import CancelCheck, ProgressCallback
from toptune_core.runs.store import RunRecord, RunStore


@dataclass
class PreparedData:
    """Features and labels of the readable photos, split into train and test."""

    dataset: Dataset
    test_dataset: Optional[Dataset]
    X: np.ndarray
    y: np.ndarray
    paths: list[str]  # absolute paths, aligned with X
    split: Split
    feature_sets: list[FeatureSet]
    unreadable: list[tuple[str, str]]

    @property
    def cache_hit(self) -> bool:
        return all(fs.cache_hit for fs in self.feature_sets)


def split_for(dataset: Dataset, test_dataset: Optional[Dataset], ok_train: np.ndarray,
              ok_test: Optional[np.ndarray], *, seed: int, test_size: float) -> tuple[np.ndarray, np.ndarray, Split]:
    """The split used by every method for this data: labels and paths of readable photos, and the split.

    The split depends only on the data, the readable photos, the seed and the
    test share, so a fine-tune with the same settings tests on the same photos.
    """
    labels = dataset.labels[ok_train]
    if test_dataset is None:
        return labels, np.asarray(dataset.paths, dtype=object)[ok_train], stratified_split(labels, test_size=test_size, seed=seed)
    test_labels = test_dataset.labels[ok_test]
    all_labels = np.concatenate([labels, test_labels])
    all_paths = np.concatenate([np.asarray(dataset.paths, dtype=object)[ok_train],
                                np.asarray(test_dataset.paths, dtype=object)[ok_test]])
    return all_labels, all_paths, test_folder_split(len(labels), len(test_labels))


def load_data(data: str | Path, test_data: Optional[str | Path] = None) -> tuple[Dataset, Optional[Dataset]]:
    dataset = load_dataset(data)
    test_dataset = load_dataset(test_data, classes=dataset.classes) if test_data else None
    return dataset, test_dataset


def prepare(dataset: Dataset, test_dataset: Optional[Dataset], extractor: FeatureExtractor, cache: FeatureCache, *,
            seed: int = 0, test_size: float = 0.25, progress: Optional[ProgressCallback] = None,
            should_cancel: Optional[CancelCheck] = None) -> PreparedData:
    """Features for the data (and test folder), aligned with labels, and the split."""
    sets = [get_features(dataset, extractor, cache, progress=progress, should_cancel=should_cancel)]
    if test_dataset is not None:
        sets.append(get_features(test_dataset, extractor, cache, progress=progress, should_cancel=should_cancel))
    X = np.concatenate([fs.entry.features for fs in sets])
    y, paths, split = split_for(dataset, test_dataset, sets[0].entry.ok, sets[1].entry.ok if len(sets) > 1 else None,
                                seed=seed, test_size=test_size)
    unreadable = [err for fs in sets for err in fs.entry.errors]
    return PreparedData(dataset, test_dataset, X, y, [str(p) for p in paths], split, sets, unreadable)


def run_toptuning(data: str | Path, *, test_data: Optional[str | Path] = None, backbone: str = DEFAULT_BACKBONE,
                  classifier: str = "rf", seed: int = 0, test_size: float = 0.25,
                  store: Optional[RunStore] = None, cache: Optional[FeatureCache] = None,
                  extractor: Optional[FeatureExtractor] = None, progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None) -> RunRecord:
    """Top-tune ``backbone`` + ``classifier`` on the photos in ``data``; returns the recorded run.

    ``extractor`` lets a caller reuse an already-loaded model (the dashboard
    keeps one per backbone). The run is recorded as cancelled or failed, with
    the error, if it does not finish.
    """
    start = time.perf_counter()
    if classifier not in CLASSIFIERS:
        make_classifier(classifier)  # raises the "unknown classifier" error
    dataset, test_dataset = load_data(data, test_data)
    store = store or RunStore()
    cache = cache or FeatureCache()
    extractor = extractor or FeatureExtractor(backbone)
    if extractor.backbone != backbone:
        raise DatasetError(f"The extractor is for {extractor.backbone}, not {backbone}.")
    params = {"data": str(dataset.root), "test_data": str(test_dataset.root) if test_dataset else None,
              "seed": seed, "test_size": test_size, "classifier_settings": CLASSIFIERS[classifier].settings,
              "classes": dataset.classes, "data_config": extractor.data_config,
              "n_images": len(dataset) + (len(test_dataset) if test_dataset else 0)}
    run = store.start(method="toptune", backbone=backbone, classifier=classifier, dataset=str(dataset.root),
                      params=params)
    try:
        prep = prepare(dataset, test_dataset, extractor, cache, seed=seed, test_size=test_size, progress=progress,
                       should_cancel=should_cancel)
        split = prep.split
        clf = make_classifier(classifier, random_state=seed)
        fit_seconds = fit_classifier(clf, prep.X[split.train_idx], prep.y[split.train_idx], progress=progress,
                                     should_cancel=should_cancel)
        t0 = time.perf_counter()
        proba = full_proba(clf, prep.X[split.test_idx], len(dataset.classes))
        predict_seconds = time.perf_counter() - t0
        result = evaluate(prep.y[split.test_idx], proba, dataset.classes, [prep.paths[i] for i in split.test_idx])
        store.save_model(run.id, {"kind": "toptune", "classifier": clf, "classes": dataset.classes,
                                  "backbone": backbone, "data_config": extractor.data_config})
        extract_seconds = sum(fs.seconds for fs in prep.feature_sets)
        feature_cost = sum(fs.entry.extract_seconds for fs in prep.feature_sets)
        timings = {
            "cache_hit": prep.cache_hit,
            "extract_seconds": extract_seconds,  # spent getting features in this run (reading the cache on a hit)
            "feature_extraction_seconds": feature_cost,  # what extracting these features cost when it was done
            "fit_seconds": fit_seconds,
            "train_seconds_without_extraction": fit_seconds,
            "train_seconds_with_extraction": feature_cost + fit_seconds,
            "predict_seconds": predict_seconds,
            "total_seconds": time.perf_counter() - start,
        }
        split_record = {**split.describe(), "n_train": int(len(split.train_idx)),
                        "test_files": [prep.paths[i] for i in split.test_idx],
                        "unreadable": [list(e) for e in prep.unreadable]}
        return store.complete(run.id, metrics=result.metrics, timings=timings, split=split_record,
                              predictions=result.predictions)
    except Cancelled as e:
        store.finish(run.id, "cancelled", str(e))
        raise
    except BaseException as e:
        store.finish(run.id, "failed", str(e) or type(e).__name__)
        raise


def summary(run: RunRecord) -> dict:
    """The short result of a run, as the command line's ``--json`` writes it."""
    t, m, s = run.timings, run.metrics, run.split
    return {"run_id": run.id, "method": run.method, "backbone": run.backbone, "classifier": run.classifier,
            "n_train": s.get("n_train"), "n_test": s.get("n_test"), "accuracy": m.get("accuracy"),
            "balanced_accuracy": m.get("balanced_accuracy"), "macro_f1": m.get("macro_f1"),
            "extract_seconds": t.get("extract_seconds"), "fit_seconds": t.get("fit_seconds"),
            "cache_hit": t.get("cache_hit"), "split": s.get("method"),
            "unreadable_images": len(s.get("unreadable", []))}
