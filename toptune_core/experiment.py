"""The experiment: load the data, read it, split it, fit any method, evaluate on held-out photos, record the run.

``run_experiment`` is the one pipeline behind the dashboard, the command line,
``compare`` and ``bench``, for both methods, so the comparison is fair by
construction: the same readable-photo rule, the same held-out photos (the
split of ``data.split``), the same metrics, the same run record, and the same
leakage check (near-duplicates across the split, ``leakage``).
Top-tuning's time is reported without and with the feature extraction.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.data.duplicates import leakage_report
from toptune_core.data.groups import session_groups
from toptune_core.data.split import load_data, split_for
from toptune_core.data.version_history import run_version
from toptune_core.errors import Cancelled, JobInterrupted, ProcessStopped
from toptune_core.evaluation import evaluate
from toptune_core.leakage import reference_comes_first, run_reference
from toptune_core.methods.base import PhotoEstimator, Photos, PhotoTable
from toptune_core.progress import CancelCheck, ProgressCallback, check_cancel
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.trust.familiarity import FamiliarityCheck, held_out_report


def _relpath(path: str, roots: list[Path]) -> str:
    p = Path(path)
    for root in roots:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(p)


def _unreadable(datasets: list, tables: list[PhotoTable]) -> list[list[str]]:
    return [[ds.relpaths[i] if i >= 0 else "?", reason] for ds, t in zip(datasets, tables) for i, reason in t.errors]


def _timings(tables: list[PhotoTable], fitted: dict, predict_seconds: float, start: float) -> dict:
    """The run's timings; top-tuning's training time without and with feature extraction."""
    read = sum(t.seconds for t in tables)
    cost = sum(t.cost_seconds for t in tables)
    uses_features = all(t.features is not None for t in tables)
    fit = fitted["fit_seconds"]
    timings = {
        "cache_hit": all(bool(t.cache_hit) for t in tables) if uses_features else None,
        "extract_seconds": read if uses_features else 0.0,  # getting the features in this run (cache read on a hit)
        "feature_extraction_seconds": cost,  # what extracting these features cost when it was done
        "train_seconds_without_extraction": fit,
        "train_seconds_with_extraction": cost + fit,
        "predict_seconds": predict_seconds,
    }
    if not uses_features:
        timings["check_seconds"] = read  # reading every photo once to find unreadable ones
    timings.update(fitted)
    timings["total_seconds"] = time.perf_counter() - start
    return timings


def _start_run(store: RunStore, estimator: PhotoEstimator, dataset, test_dataset, run_id: Optional[str],
               seed: int, test_size: float, split: str) -> RunRecord:
    params = {"data": str(dataset.root), "test_data": str(test_dataset.root) if test_dataset else None,
              "seed": seed, "test_size": test_size, "split": split, "classes": dataset.classes,
              "n_images": len(dataset) + (len(test_dataset) if test_dataset else 0), **estimator.record(),
              "version": run_version(dataset, store)}
    if run_id is None:
        return store.start(method=estimator.method, backbone=estimator.backbone, dataset=str(dataset.root),
                           classifier=getattr(estimator, "record_classifier", None), params=params)
    store.update(run_id, params=params, dataset=str(dataset.root), backbone=estimator.backbone)
    return store.get(run_id)


def run_experiment(estimator: PhotoEstimator, data: str | Path, *, test_data: Optional[str | Path] = None,
                   seed: int = 0, test_size: float = 0.25, split: str = "random", store: Optional[RunStore] = None,
                   progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
                   run_id: Optional[str] = None, on_stage: Optional[Callable[[RunRecord], None]] = None
                   ) -> RunRecord:
    """Train ``estimator`` on ``data`` and test it on held-out photos; returns the recorded run.

    ``on_stage(run)`` is called after each stage's model is recorded (a progressive top-tune: the first model,
    then the final one; see ``_train_and_test``).

    ``split``: "random" (stratified) or "grouped" (near-duplicates kept on one side), see ``data.split``.

    The run is recorded as running first (``run_id`` continues one already
    recorded, e.g. by a process job); it ends completed, or cancelled /
    interrupted / failed with its error and the curve so far.
    """
    start = time.perf_counter()
    store = store or RunStore()
    curve: list[dict] = []
    try:
        estimator.check_params()
        dataset, test_dataset = load_data(data, test_data, home=store.root)
        run = _start_run(store, estimator, dataset, test_dataset, run_id, seed, test_size, split)
        run_id = run.id
        return _train_and_test(estimator, store, run, dataset, test_dataset, (seed, test_size, split), curve,
                               start, progress, should_cancel, on_stage)
    except BaseException as e:
        if run_id is not None:
            record_end(store, run_id, e, curve)
        raise


def record_end(store: RunStore, run_id: str, e: BaseException, curve: list) -> None:
    """Record how a run ended early: cancelled (by the user), interrupted (stopped from outside) or failed."""
    if isinstance(e, Cancelled):
        store.finish(run_id, "cancelled", str(e), curve=curve)
    elif isinstance(e, KeyboardInterrupt):
        store.finish(run_id, "cancelled", "Interrupted from the keyboard.", curve=curve)
    elif isinstance(e, JobInterrupted):
        store.finish(run_id, "interrupted", str(e), curve=curve)
    elif isinstance(e, ProcessStopped):
        store.finish(run_id, e.status, str(e), curve=curve)
    else:
        store.finish(run_id, "failed", str(e) or type(e).__name__, curve=curve)


def _split(estimator, datasets: list, tables: list[PhotoTable], how: tuple, progress, should_cancel) -> tuple:
    """The split of ``data.split`` over the readable photos: (labels, photos, split, reference features, seconds
    of the grouping work). Only the grouped split reads the reference features that find near-duplicates here
    (its session groups, ``data.groups``: likely the same plant or session, near-duplicates included, found among
    the training folder's photos); otherwise they are None until ``_with_reference``."""
    seed, test_size, kind = how
    reference, seconds = run_reference(estimator, datasets, tables, progress, should_cancel) if kind == "grouped" \
        else (None, 0.0)
    t0 = time.perf_counter()
    n_folder = int(tables[0].ok.sum())
    groups = session_groups(reference[:n_folder]) if kind == "grouped" and len(datasets) == 1 else None
    labels, paths, split = split_for(datasets[0], datasets[1] if len(datasets) > 1 else None, tables[0].ok,
                                     tables[1].ok if len(datasets) > 1 else None, seed=seed, test_size=test_size,
                                     split=kind, groups=groups)
    return labels, Photos([str(p) for p in paths], None), split, reference, seconds + time.perf_counter() - t0


def _with_reference(fixed: tuple, estimator, datasets: list, tables: list[PhotoTable], progress,
                    should_cancel) -> tuple:
    """``fixed`` (a ``_split``) with the reference features and the groups handed to ``fit`` (for its
    cross-validation: the kernel's leave-one-out, the automatic choice's estimate), found among the training photos
    only, so held-out photos never shape them."""
    labels, photos, split, reference, seconds = fixed
    if photos.groups is not None:
        return fixed
    if reference is None:
        reference, more = run_reference(estimator, datasets, tables, progress, should_cancel)
        seconds += more
    t0 = time.perf_counter()
    groups = np.full(len(photos.paths), -1)
    groups[split.train_idx] = session_groups(reference[split.train_idx])
    return labels, Photos(photos.paths, None, groups), split, reference, seconds + time.perf_counter() - t0


def _train_and_test(estimator, store: RunStore, run: RunRecord, dataset, test_dataset, how: tuple,
                    curve: list, start: float, progress, should_cancel, on_stage=None) -> RunRecord:
    """Every stage of ``estimator`` (``PhotoEstimator.stages``: for a first top-tune, the first view, then all) on
    one split: each stage's model replaces the one before as the run's model, and the run record lists every
    stage (``metrics["stages"]``). A cancel after a finished stage keeps that stage's model (the run stays
    completed, its last stage marked cancelled)."""
    check_cancel(should_cancel, "The run")
    datasets = [dataset] + ([test_dataset] if test_dataset else [])
    stages, done, record, fixed = estimator.stages(datasets), [], None, None
    for k, stage in enumerate(stages):
        try:
            tables = [stage.read(ds, progress=progress, should_cancel=should_cancel) for ds in datasets]
            # A first model whose fit reads no groups, on a split that needs none, comes before the near-duplicate
            # reference (a second extraction): the reference follows it, for the final model and its report.
            early = k < len(stages) - 1 and not reference_comes_first(how[2], stage)
            fixed = fixed or _split(stage, datasets, tables, how, progress, should_cancel)
            if not early:
                fixed = _with_reference(fixed, stage, datasets, tables, progress, should_cancel)
            record = _fit_and_record(stage, store, run, datasets, tables, fixed, curve, start, progress,
                                     should_cancel, done, final=k == len(stages) - 1)
        except (Cancelled, KeyboardInterrupt) as e:
            if record is None:
                raise
            done.append({**_stage_entry(stage, start), "status": "cancelled", "message": str(e) or "Cancelled."})
            store.update(run.id, metrics={**record.metrics, "stages": done})
            return store.get(run.id)
        if on_stage is not None:
            on_stage(record)
    return record


def _stage_entry(estimator, start: float) -> dict:
    views = (estimator.record() or {}).get("views") if estimator.method == "toptune" else None
    return {"views": views, "n_views": (estimator.record() or {}).get("n_views"),
            "seconds": round(time.perf_counter() - start, 3)}


def _fit_and_record(estimator, store: RunStore, run: RunRecord, datasets: list, tables: list, fixed: tuple,
                    curve: list, start: float, progress, should_cancel, done: list, final: bool) -> RunRecord:
    """Fit one stage on the training photos, test it on the held-out ones, save its model and record the run."""
    labels, photos, split, reference, duplicate_seconds = fixed
    dataset = datasets[0]
    features = np.concatenate([t.features for t in tables]) if tables[0].features is not None else None
    photos = Photos(photos.paths, features, photos.groups)

    def on_epoch(entry: dict) -> None:
        curve.append(entry)
        store.update(run.id, curve=curve)

    train, test = photos.subset(split.train_idx), photos.subset(split.test_idx)
    y_train, y_test = labels[split.train_idx], labels[split.test_idx]
    estimator.fit(train, y_train, dataset.classes, progress=progress, should_cancel=should_cancel, on_epoch=on_epoch)
    t0 = time.perf_counter()
    test = Photos(test.paths, estimator.embed(test, progress=progress, should_cancel=should_cancel))
    proba = estimator.predict_proba(test, progress=progress, should_cancel=should_cancel)
    predict_seconds = time.perf_counter() - t0
    result = evaluate(y_test, proba, dataset.classes, test.paths)
    check, familiarity_seconds = _familiarity(estimator, train, y_train, dataset.classes, fixed_seed(run), progress,
                                              should_cancel)
    report = held_out_report(check, test.features, y_test, proba.argmax(axis=1))
    result.metrics["familiarity"] = report
    verdicts = check.check(test.features, n_nearest=0)
    result.predictions["familiarity"] = [v.familiarity for v in verdicts]
    result.predictions["recognised"] = [v.recognised for v in verdicts]
    check_cancel(should_cancel, "The run")
    store.update(run.id, params={**run.params, **estimator.record(), "familiarity": check.describe()})
    store.save_model_files(run.id, lambda folder: estimator.save(folder) + check.save(folder))
    roots = [ds.root for ds in datasets]
    notes = dict(estimator.split_notes())
    if "val_paths" in notes:
        notes["val_files"] = [_relpath(p, roots) for p in notes.pop("val_paths")]
    leakage = None if reference is None else leakage_report(  # None: found after the first model
        reference, split.train_idx, split.test_idx, [_relpath(p, roots) for p in photos.paths],
        correct=result.predictions["correct"].to_numpy())
    split_record = {**split.describe(), "n_train": int(len(split.train_idx)), **notes, "test_files": test.paths,
                    "unreadable": _unreadable(datasets, tables), "near_duplicates": leakage}
    fitted = {**estimator.timings(), "familiarity_seconds": familiarity_seconds,
              "duplicate_check_seconds": duplicate_seconds}
    done.append({**_stage_entry(estimator, start), "status": "final" if final else "first",
                 "accuracy": result.metrics.get("accuracy"),
                 "balanced_accuracy": result.metrics.get("balanced_accuracy")})
    result.metrics["stages"] = list(done)
    return store.complete(run.id, metrics=result.metrics, split=split_record, predictions=result.predictions,
                          timings=_timings(tables, fitted, predict_seconds, start), curve=curve or None)


def fixed_seed(run: RunRecord) -> int:
    """The run's seed (the familiarity check's folds use it)."""
    return int((run.params or {}).get("seed", 0))


def _familiarity(estimator, train: Photos, y_train, classes, seed: int, progress, should_cancel
                 ) -> tuple[FamiliarityCheck, float]:
    """The familiarity check of a fitted estimator, calibrated on its training photos only."""
    t0 = time.perf_counter()
    embeddings = estimator.embed(train, progress=progress, should_cancel=should_cancel)  # cached for top-tuning
    check = FamiliarityCheck(seed=seed).fit(embeddings, y_train, train.paths, classes)
    return check, time.perf_counter() - t0


def run_toptuning(data: str | Path, *, test_data: Optional[str | Path] = None, backbone: str = DEFAULT_BACKBONE,
                  classifier: Optional[str] = None, seed: int = 0, test_size: float = 0.25, split: str = "random",
                  views: Optional[str] = None, resolution: Optional[int] = None,
                  store: Optional[RunStore] = None, cache=None, extractor=None,
                  progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None,
                  on_stage: Optional[Callable[[RunRecord], None]] = None) -> RunRecord:
    """Top-tune ``backbone`` + ``classifier`` (default: ``DEFAULT_CLASSIFIER``) on ``data`` with ``views`` of each
    photo at ``resolution`` (None: the defaults): ``run_experiment`` with a ``TopTuner``."""
    from toptune_core.methods.classifiers import DEFAULT_CLASSIFIER
    from toptune_core.methods.toptuner import TopTuner

    tuner = TopTuner(backbone, classifier or DEFAULT_CLASSIFIER, seed, views=views, resolution=resolution,
                     extractor=extractor, cache=cache)
    return run_experiment(tuner, data, test_data=test_data, seed=seed, test_size=test_size, split=split, store=store,
                          progress=progress, should_cancel=should_cancel, on_stage=on_stage)


def summary(run: RunRecord) -> dict:
    """The short result of a run, as the command line's ``--json`` writes it."""
    t, m, s = run.timings, run.metrics, run.split
    out: dict[str, Any] = {
        "run_id": run.id, "method": run.method, "backbone": run.backbone, "classifier": run.classifier,
        "n_train": s.get("n_train"), "n_test": s.get("n_test"), "accuracy": m.get("accuracy"),
        "balanced_accuracy": m.get("balanced_accuracy"), "macro_f1": m.get("macro_f1"),
        "extract_seconds": t.get("extract_seconds"), "fit_seconds": t.get("fit_seconds"),
        "cache_hit": t.get("cache_hit"), "split": s.get("method"), "unreadable_images": len(s.get("unreadable", [])),
        "views": (run.params or {}).get("views") or ((run.params or {}).get("hyper") or {}).get("test_views") or "1",
        "resolution": (run.params or {}).get("resolution")}
    if run.method == "toptune":
        choice = (run.params or {}).get("classifier_choice") or {}
        out["chosen_classifier"] = choice.get("chosen", run.classifier)  # auto: the classifier CV chose
        out["classifier_choice"] = choice
        out["engine"], out["precision"] = t.get("engine"), t.get("precision")  # what extracted the features
    duplicates = s.get("near_duplicates") or {}
    out["test_photos_with_near_duplicate"] = duplicates.get("test_photos_with_twin")
    familiarity = m.get("familiarity") or {}
    out["coverage"] = familiarity.get("coverage")  # held-out photos the unknown-photo check recognises
    out["accuracy_recognised"] = familiarity.get("accuracy_recognised")
    out["stages"] = m.get("stages") or []  # each stage's views, seconds since the run started, accuracy
    return out
