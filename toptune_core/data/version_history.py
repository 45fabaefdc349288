"""What runs record about the dataset version they trained on, and what is compared across versions.

Every run's params carry ``version`` (``run_version``): the version's id (the
dataset fingerprint's first 12 characters: the same for a folder and its
unedited version), its source folder, the ids of the edits it includes, the
edits since the original (``summary``) and what changed since the previous run
on the same source (``changes``: +N photos, M moved, K left out, edits undone).
``versions_frame`` lines the runs up by version for the Compare page;
``retrain_settings`` is what "Train again" reuses of a run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from toptune_core.data.dataset import Dataset
from toptune_core.data.versions import DatasetVersions, Edit, VersionedDataset
from toptune_core.errors import ToptuneError

ZERO = {"added": 0, "moved": 0, "left_out": 0}


def version_of(dataset: Dataset) -> dict:
    """``id``, ``source``, ``edit_ids`` and ``summary`` (edits since the original) of the version ``dataset`` is."""
    if isinstance(dataset, VersionedDataset):
        return dict(dataset.version)
    return {"id": dataset.fingerprint()[:12], "source": str(dataset.root), "edit_ids": [], "summary": dict(ZERO)}


def changes_between(previous: Optional[dict], current: dict, history: Sequence[Edit] = ()) -> dict:
    """What changed from version ``previous`` to ``current`` (run records): photos added, moved, left out and
    edits undone; ``history``: the edit list (all edits), to tell the kinds of edits apart. No previous: the
    edits since the original."""
    if previous is None:
        return {**ZERO, **current.get("summary", {}), "undone": 0, "previous": None}
    kinds = {e.id: e.kind for e in history}
    new = set(current.get("edit_ids", [])) - set(previous.get("edit_ids", []))
    gone = set(previous.get("edit_ids", [])) - set(current.get("edit_ids", []))
    count = {k: sum(kinds.get(i) == k for i in new) for k in ("add", "move", "leave_out")}
    return {"added": count["add"], "moved": count["move"], "left_out": count["leave_out"], "undone": len(gone),
            "previous": previous.get("id")}


def describe_changes(changes: dict) -> str:
    """``+5 photos, 1 moved, 2 left out`` (or ``no change``), for ``changes`` or a ``summary``."""
    added = changes.get("added") or 0
    parts = [f"+{added} photo{'s' if added != 1 else ''}" if added else "",
             f"{changes['moved']} moved" if changes.get("moved") else "",
             f"{changes['left_out']} left out" if changes.get("left_out") else "",
             f"{changes['undone']} undone" if changes.get("undone") else ""]
    return ", ".join(p for p in parts if p) or "no change"


def run_version(dataset: Dataset, store) -> dict:
    """``version_of(dataset)`` plus ``changes`` since the version of the newest earlier run on the same source in
    ``store`` (a ``RunStore``): what ``experiment`` records in a run's params as ``version``."""
    current = version_of(dataset)
    previous = None
    for run in store.list():  # newest first
        recorded = (run.params or {}).get("version")
        if isinstance(recorded, dict) and recorded.get("source") == current["source"]:
            previous = recorded
            break
    history = DatasetVersions(store.root, current["source"]).all_edits if current["edit_ids"] else []
    return {**current, "changes": changes_between(previous, current, history)}


def retrain_settings(run) -> dict:
    """The settings a run was top-tuned with, to train again on the current version of its folder (keyword
    arguments of ``experiment.run_toptuning``); ``ToptuneError`` for a run that was not top-tuned."""
    if run.method != "toptune":
        raise ToptuneError(f"Run {run.id} is a fine-tune; 'Train again' top-tunes. Choose a top-tuned model, or "
                           "fine-tune again on the Fine-tune page.")
    p = run.params or {}
    return {"data": p.get("data") or run.dataset, "test_data": p.get("test_data"), "backbone": run.backbone,
            "classifier": run.classifier, "seed": int(p.get("seed", 0)), "test_size": float(p.get("test_size", 0.25)),
            "split": p.get("split", "random"), "views": p.get("views"), "resolution": p.get("resolution")}


def versions_frame(runs: Sequence) -> pd.DataFrame:
    """One row per completed run that recorded its version: the source, the version (``v1``, ``v2``... in the
    order they were first trained on, per source, with its edits since the original), the settings and the
    held-out accuracy; the oldest version first."""
    rows = []
    for r in runs:
        v = (r.params or {}).get("version")
        if r.status != "completed" or not isinstance(v, dict) or (r.metrics or {}).get("accuracy") is None:
            continue
        setting = f"{r.backbone} + {r.classifier}" + (f", views {r.params['views']}" if r.params.get("views") else "")
        rows.append({"source": Path(v["source"]).name, "source path": v["source"], "version id": v["id"],
                     "edits": describe_changes(v.get("summary") or {}), "setting": setting,
                     "accuracy": r.metrics["accuracy"], "photos": (r.params or {}).get("n_images"), "run": r.id,
                     "created": r.created})
    columns = ["source", "version", "version id", "edits", "setting", "accuracy", "photos", "run", "started"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows).sort_values("created", kind="stable")
    first = frame.groupby(["source path", "version id"], sort=False)["created"].min().reset_index()
    first["version"] = first.groupby("source path").cumcount().add(1).map("v{}".format)
    frame = frame.merge(first[["source path", "version id", "version"]], on=["source path", "version id"])
    frame["started"] = [time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) for t in frame["created"]]
    return frame.sort_values(["source", "created"], kind="stable")[columns].reset_index(drop=True)
