"""The recorded fine-tune (``run_finetuning``) and loading a finished one (``load_finetuned``).

``run_finetuning`` drives ``FineTuner`` through the ``PhotoEstimator``
protocol only (read -> split -> fit -> predict_proba -> evaluate -> save ->
record), the way ``toptune_core.experiment`` drives any method, so it can
become a thin wrapper over the shared experiment runner.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.backbones.pixels import eval_data_config
from toptune_core.errors import Cancelled, JobInterrupted, ToptuneError
from toptune_core.evaluation import evaluate
from toptune_core.finetune.recipe import FINETUNE_DEFAULTS
from toptune_core.methods.base import Photos
from toptune_core.methods.finetuner import WEIGHTS_FILE, FineTuner
from toptune_core.progress import CancelCheck, ProgressCallback, check_cancel
from toptune_core.runs.store import RunRecord, RunStore


def _relpath(path: str, roots: Sequence[Path]) -> str:
    p = Path(path)
    for root in roots:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(p)


def _make_tuner(backbone: str, seed: int, hyper: dict) -> FineTuner:
    settable = [k for k in FINETUNE_DEFAULTS if k not in ("backbone", "seed")]
    unknown = sorted(set(hyper) - set(settable))
    if unknown:
        raise ToptuneError(f"Unknown fine-tune setting(s): {', '.join(unknown)}. Known: {', '.join(settable)}.")
    return FineTuner(backbone=backbone, seed=seed, **hyper).check_params()


def _fit_and_score(tuner: FineTuner, dataset, test_dataset, *, seed, test_size, progress, should_cancel,
                   on_epoch) -> tuple[dict, dict, Any]:
    """read -> split -> fit -> predict_proba -> evaluate; returns (timings, split record, evaluation)."""
    from toptune_core.experiment import split_for

    start = time.perf_counter()
    check_cancel(should_cancel, "Fine-tuning")
    table = tuner.read(dataset, progress=progress, should_cancel=should_cancel)
    test_table = tuner.read(test_dataset, progress=progress, should_cancel=should_cancel) if test_dataset else None
    check_seconds = time.perf_counter() - start
    if not table.ok.any():
        raise ToptuneError(f"None of the {len(dataset)} photos could be read; the first problem: "
                           f"{table.errors[0][1] if table.errors else 'unknown'}")
    labels, paths, split = split_for(dataset, test_dataset, table.ok, test_table.ok if test_table else None,
                                     seed=seed, test_size=test_size)
    photos = Photos([str(p) for p in paths])
    unreadable = [[dataset.relpaths[i], r] for i, r in table.errors]
    if test_table is not None:
        unreadable += [[test_dataset.relpaths[i], r] for i, r in test_table.errors]
    tuner.fit(photos.subset(split.train_idx), labels[split.train_idx], dataset.classes, progress=progress,
              should_cancel=should_cancel, on_epoch=on_epoch)
    t0 = time.perf_counter()
    test = photos.subset(split.test_idx)
    proba = tuner.predict_proba(test, progress=progress, should_cancel=should_cancel)
    predict_seconds = time.perf_counter() - t0
    result = evaluate(labels[split.test_idx], proba, dataset.classes, test.paths)
    t = tuner.timings()
    timings = {"cache_hit": None, "extract_seconds": 0.0, "feature_extraction_seconds": 0.0,  # no features
               "check_seconds": check_seconds,  # reading every photo once to find unreadable ones
               "fit_seconds": t["fit_seconds"], "train_seconds": t["train_seconds"],
               "train_seconds_without_extraction": t["train_seconds"],
               "train_seconds_with_extraction": t["train_seconds"], "predict_seconds": predict_seconds,
               **{k: v for k, v in t.items() if k not in ("fit_seconds", "train_seconds")}}
    notes = tuner.split_notes()
    roots = [dataset.root] + ([test_dataset.root] if test_dataset else [])
    split_record = {**split.describe(), "n_train": int(len(split.train_idx)), "n_val": notes["n_val"],
                    "validation": notes["validation"], "test_files": test.paths,
                    "val_files": [_relpath(p, roots) for p in notes["val_paths"]], "unreadable": unreadable}
    return timings, split_record, result


def run_finetuning(data: str | Path, *, test_data: Optional[str | Path] = None, backbone: str = DEFAULT_BACKBONE,
                   seed: int = 0, test_size: float = 0.25, store: Optional[RunStore] = None,
                   progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
                   run_id: Optional[str] = None, **hyper: Any) -> RunRecord:
    """Fine-tune ``backbone`` on ``data`` with the top-tuning split; returns the recorded run (method 'finetune').

    The run is recorded as ``running`` first; its curve is updated after every
    epoch; it ends ``completed`` (metrics on the held-out photos, per-image
    predictions, weights), or ``cancelled`` / ``failed`` / ``interrupted`` with the
    curve so far. ``run_id``: continue a run already recorded (``FinetuneJob``
    records it before starting the training process). ``hyper``: any ``FINETUNE_DEFAULTS`` setting.
    """
    from toptune_core.experiment import load_data

    start = time.perf_counter()
    store = store or RunStore()
    run = store.get(run_id) if run_id else None
    curve: list[dict] = []
    try:
        tuner = _make_tuner(backbone, seed, hyper)
        dataset, test_dataset = load_data(data, test_data)
    except BaseException as e:
        if run is not None:
            store.finish(run.id, "failed", str(e) or type(e).__name__)
        raise
    params = {"data": str(dataset.root), "test_data": str(test_dataset.root) if test_dataset else None,
              "seed": seed, "test_size": test_size, "classes": dataset.classes,
              "data_config": eval_data_config(backbone),
              "n_images": len(dataset) + (len(test_dataset) if test_dataset else 0), **tuner.record()}
    if run is None:
        run = store.start(method=tuner.method, backbone=backbone, dataset=str(dataset.root), params=params)
    else:
        store.update(run.id, params=params, dataset=str(dataset.root), backbone=backbone)

    def on_epoch(entry: dict) -> None:
        curve.append(entry)
        store.update(run.id, curve=curve)

    try:
        timings, split_record, result = _fit_and_score(tuner, dataset, test_dataset, seed=seed, test_size=test_size,
                                                       progress=progress, should_cancel=should_cancel,
                                                       on_epoch=on_epoch)
        check_cancel(should_cancel, "Fine-tuning")
        tuner.save(store.run_dir(run.id))
        timings["total_seconds"] = time.perf_counter() - start
        return store.complete(run.id, metrics=result.metrics, timings=timings, split=split_record,
                              predictions=result.predictions, curve=curve)
    except Cancelled as e:
        store.finish(run.id, "cancelled", str(e), curve=curve)
        raise
    except KeyboardInterrupt:
        store.finish(run.id, "cancelled", "Fine-tuning was interrupted from the keyboard.", curve=curve)
        raise
    except JobInterrupted as e:
        store.finish(run.id, "interrupted", str(e), curve=curve)
        raise
    except BaseException as e:
        store.finish(run.id, "failed", str(e) or type(e).__name__, curve=curve)
        raise


def load_finetuned(store: RunStore, run: RunRecord, *, device: Optional[str] = None) -> FineTuner:
    """The fine-tuned model of a completed run, from that run's own folder in the store."""
    folder = store.run_dir(run.id).resolve()
    if store.runs_dir.resolve() not in folder.parents:
        raise ToptuneError(f"Refusing to load a model from outside the data folder: {folder}")
    if run.method != "finetune":
        raise ToptuneError(f"Run {run.id} is a {run.method} run, not a fine-tune.")
    if not (folder / WEIGHTS_FILE).exists():
        raise ToptuneError(f"Run {run.id} has no saved fine-tuned weights (status: {run.status}); "
                           "choose a completed fine-tune.")
    return FineTuner.load(folder, device=device)
