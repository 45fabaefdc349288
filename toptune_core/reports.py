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
        parts.insert(0, f"classifier {classifier_words(run.classifier)}")
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


def classifier_words(name: Optional[str]) -> str:
    """A top classifier's label (``methods.classifiers``: "Logistic regression"), not its code name."""
    from toptune_core.methods.classifiers import CLASSIFIERS

    spec = CLASSIFIERS.get(str(name))
    return spec.label if spec else str(name)


def views_words(name: Optional[str]) -> str:
    """A view set in words: "8 views (every flip and quarter turn)"."""
    from toptune_core.features.views import VIEW_SETS

    words = {"1": "1 view (the photo as it is)", "flip": "2 views (the photo and its mirror image)",
             "dihedral": "8 views (every flip and quarter turn)"}
    name = str(name or "1")
    return words.get(name, f"{len(VIEW_SETS.get(name, ()))} views ({name})")


def setting_words(run: RunRecord) -> str:
    """E.g. "tf_efficientnet_lite0 + Logistic regression, 8 views (every flip and quarter turn)"."""
    how = classifier_words(run.classifier) if run.method == "toptune" else "fine-tuned"
    return f"{run.backbone} + {how}, {views_words(run_views(run))}"


def run_views(run: RunRecord) -> str:
    """The views each held-out photo was answered from: the top-tuned run's view set, the fine-tune's test-time
    views ("1" for runs recorded before views existed)."""
    p = run.params or {}
    return str(p.get("views") or (p.get("hyper") or {}).get("test_views") or "1")


def run_resolution(run: RunRecord) -> Optional[int]:
    """The backbone's input side the run used (its recorded data config)."""
    cfg = (run.params or {}).get("data_config") or {}
    return int(cfg["input_size"][-1]) if cfg.get("input_size") else None


def pareto_front(accuracy: Sequence[Optional[float]], seconds: Sequence[Optional[float]]) -> list[bool]:
    """True for the best trade-offs: runs no other run beats on both accuracy and training time.

    A run is on the front when no other run is at least as accurate and at most as long while better in
    one of the two. Runs missing either number are not on it.
    """
    points = [(a, t) if a is not None and t is not None and math.isfinite(a) and math.isfinite(t) else None
              for a, t in zip(accuracy, seconds)]

    def beaten(p) -> bool:
        return any(q is not None and q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in points)

    return [p is not None and not beaten(p) for p in points]


def runs_frame(runs: Sequence[RunRecord], include_extraction: bool = True) -> pd.DataFrame:
    """One row per run with its method, backbone, metrics and times (seconds), newest first; ``best trade-off``
    marks the Pareto front of accuracy against training time (as counted with ``include_extraction``)."""
    rows = []
    for r in runs:
        m, s, t = r.metrics or {}, r.split or {}, r.timings or {}
        rows.append({
            "run": r.id,
            "method": METHOD_NAMES.get(r.method, r.method),
            "backbone": r.backbone,
            "classifier": classifier_words(r.classifier) if r.method == "toptune" else "(network head)",
            "views": views_words(run_views(r)),
            "resolution (px)": run_resolution(r),
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
            "held-out split": s.get("method"),
            "dataset": Path(r.dataset).name,
            "settings": run_settings(r),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
        })
    columns = ["run", "method", "backbone", "classifier", "views", "resolution (px)", "status", "accuracy",
               "balanced accuracy", "macro F1", "coverage", "accuracy on recognised", "training time (s)",
               "feature extraction (s)", "features from cache", "training photos", "test photos", "held-out split",
               "dataset", "settings", "started"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.insert(columns.index("training time (s)") + 1, "best trade-off",
                 pareto_front(frame["accuracy"].tolist(), frame["training time (s)"].tolist()))
    return frame


# --- a dataset at a glance ---------------------------------------------------------------------

def image_sizes(paths: Sequence[Path], limit: int = 200) -> pd.DataFrame:
    """Width and height (from the file header, no decoding) of up to ``limit`` photos spread over ``paths``."""
    from PIL import Image

    from toptune_core.data import storage

    n = len(paths)
    if n == 0:
        return pd.DataFrame(columns=["path", "width", "height"])
    step = max(1, math.ceil(n / limit))
    rows = []
    for path in list(paths)[::step][:limit]:
        try:
            with storage.open_file(path) as fh, Image.open(fh) as im:  # a file or an object, its header only
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
