"""Runs and datasets in plain-words tables (streamlit-free): the compare table, training times, photo sizes."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from toptune_core.runs.store import RunRecord


# --- runs as a table ---------------------------------------------------------------------------

METHOD_NAMES = {"toptune": "top-tuned", "finetune": "fine-tuned"}
_FINETUNE_TIME_KEYS = ("train_seconds", "training_seconds", "fit_seconds", "total_seconds")


def training_seconds(run: RunRecord, include_extraction: bool = True) -> Optional[float]:
    """The run's training time in seconds.

    Top-tuning: the classifier fit, plus (when ``include_extraction``) what
    extracting the features cost when they were first extracted. Fine-tuning:
    the recorded training time, else the run's wall-clock time.
    """
    t = run.timings or {}
    if run.method == "toptune":
        key = "train_seconds_with_extraction" if include_extraction else "train_seconds_without_extraction"
        value = t.get(key)
    else:
        value = next((t[k] for k in _FINETUNE_TIME_KEYS if isinstance(t.get(k), (int, float))), None)
        if value is None and run.finished:
            value = run.finished - run.created
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_settings(run: RunRecord) -> str:
    """The run's parameters in a few plain words, for hover text and tables."""
    p = run.params or {}
    parts = [f"seed {p.get('seed', '?')}", f"test share {p.get('test_size', '?')}"]
    if run.method == "toptune":
        parts.insert(0, f"classifier {run.classifier}")
    else:
        hyper = {**p, **(p.get("hyper") or {})}
        for key in ("head_epochs", "epochs", "budget_seconds", "lr", "batch_size"):
            if hyper.get(key) is not None:
                parts.append(f"{key.replace('_', ' ')} {hyper[key]:g}" if isinstance(hyper[key], float)
                             else f"{key.replace('_', ' ')} {hyper[key]}")
        epochs_run = (run.timings or {}).get("epochs_run")
        if epochs_run:
            parts.append(f"epochs run {epochs_run}")
    return ", ".join(parts)


def runs_frame(runs: Sequence[RunRecord], include_extraction: bool = True) -> pd.DataFrame:
    """One row per run with its method, backbone, metrics and times (seconds), newest first."""
    rows = []
    for r in runs:
        m, s, t = r.metrics or {}, r.split or {}, r.timings or {}
        rows.append({
            "run": r.id,
            "method": METHOD_NAMES.get(r.method, r.method),
            "backbone": r.backbone,
            "classifier": r.classifier if r.method == "toptune" else "(network head)",
            "status": r.status,
            "accuracy": m.get("accuracy"),
            "balanced accuracy": m.get("balanced_accuracy"),
            "macro F1": m.get("macro_f1"),
            "coverage": (m.get("familiarity") or {}).get("coverage"),
            "accuracy on recognised": (m.get("familiarity") or {}).get("accuracy_recognised"),
            "training time (s)": training_seconds(r, include_extraction),
            "feature extraction (s)": t.get("feature_extraction_seconds") if r.method == "toptune" else None,
            "features from cache": t.get("cache_hit") if r.method == "toptune" else None,
            "training photos": s.get("n_train"),
            "test photos": s.get("n_test"),
            "dataset": Path(r.dataset).name,
            "settings": run_settings(r),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
        })
    columns = ["run", "method", "backbone", "classifier", "status", "accuracy", "balanced accuracy", "macro F1",
               "coverage", "accuracy on recognised", "training time (s)", "feature extraction (s)", "features from cache", "training photos",
               "test photos", "dataset", "settings", "started"]
    return pd.DataFrame(rows, columns=columns)


# --- a dataset at a glance ---------------------------------------------------------------------

def image_sizes(paths: Sequence[Path], limit: int = 200) -> pd.DataFrame:
    """Width and height (from the file header, no decoding) of up to ``limit`` photos spread over ``paths``."""
    from PIL import Image

    n = len(paths)
    if n == 0:
        return pd.DataFrame(columns=["path", "width", "height"])
    step = max(1, math.ceil(n / limit))
    rows = []
    for path in list(paths)[::step][:limit]:
        try:
            with Image.open(path) as im:
                rows.append((str(path), *im.size))
        except Exception:  # unreadable photos are reported when features are extracted
            rows.append((str(path), None, None))
    return pd.DataFrame(rows, columns=["path", "width", "height"])


def describe_sizes(sizes: pd.DataFrame, input_size: Optional[int] = None) -> tuple[str, list[str]]:
    """A plain-words line about photo sizes, and warnings (unreadable headers, photos smaller than the input)."""
    ok = sizes.dropna()
    warnings = []
    if len(ok) < len(sizes):
        warnings.append(f"{len(sizes) - len(ok)} of the {len(sizes)} photos checked could not be opened; "
                        "they will be skipped.")
    if ok.empty:
        return "Photo sizes could not be read.", warnings
    common = Counter(zip(ok.width.astype(int), ok.height.astype(int))).most_common(1)[0]
    pixels = ok.width * ok.height
    small, large = ok.loc[pixels.idxmin()], ok.loc[pixels.idxmax()]
    line = (f"Checked {len(sizes)} photos: most common size {common[0][0]}×{common[0][1]} px ({common[1]} photos); "
            f"smallest {int(small.width)}×{int(small.height)}, largest {int(large.width)}×{int(large.height)}.")
    if input_size:
        tiny = int(((ok.width < input_size) | (ok.height < input_size)).sum())
        if tiny:
            warnings.append(f"{tiny} of the checked photos are smaller than the backbone's {input_size} px input; "
                            "they are enlarged, which can blur details.")
    return line, warnings
