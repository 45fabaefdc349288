"""What runs record about the dataset version they trained on, and what is compared across versions.

Every run's params carry ``version`` (``run_version``): the version's id (the
dataset fingerprint's first 12 characters: the same for a folder and its
unedited version), its source folder, the ids of the edits it includes, the
edits since the original (``summary``) and what changed since the previous run
on the same source (``changes``: +N photos, M moved, K left out, edits undone).
``versions_frame`` lines the runs up by version for the Compare page;
``retrain_settings`` is what "Train again" reuses of a run.

**Version names**: one short name everywhere (Data, Classify, Compare): ``v1``, ``v2``... per source, in the
order runs first trained on them (``version_names``); a version no run trained on yet is the next number,
"not trained on yet" (``version_name``). The id (a hash) is for tooltips.
"""

from __future__ import annotations

import json
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


def _trained_versions(runs: Sequence) -> list[tuple[float, str, str]]:
    """(created, source path, version id) of each completed run that recorded its version."""
    found = []
    for r in runs:
        v = (r.params or {}).get("version")
        if r.status == "completed" and isinstance(v, dict) and v.get("id") and v.get("source"):
            found.append((r.created, str(v["source"]), str(v["id"])))
    return found


def version_names(runs: Sequence) -> dict[tuple[str, str], str]:
    """``(source path, version id) -> "v1"``, ``"v2"``...: per source, in the order runs first trained on them."""
    names: dict[tuple[str, str], str] = {}
    count: dict[str, int] = {}
    for _, source, vid in sorted(_trained_versions(runs)):
        if (source, vid) not in names:
            count[source] = count.get(source, 0) + 1
            names[(source, vid)] = f"v{count[source]}"
    return names


def version_name(runs: Sequence, version: dict) -> tuple[str, bool]:
    """The short name of ``version`` (``version_of``'s dict) and whether a run trained on it: ``("v3", True)``,
    or the next number, ``("v4", False)``, for a version no run has trained on yet."""
    names = version_names(runs)
    source, vid = str(version.get("source")), str(version.get("id"))
    if (source, vid) in names:
        return names[(source, vid)], True
    return f"v{sum(s == source for s, _ in names) + 1}", False


def held_out_note(run, first, first_name: str = "v1") -> str:
    """How ``run``'s held-out photos compare with those of ``first`` (the first run of its source and split
    settings, on version ``first_name``): "same as v1", "as v1, less 2 left out", or "3 not in v1's" (runs
    recorded before the stable split, or a version whose photos changed on disk)."""
    mine = set((run.split or {}).get("test_files") or [])
    theirs = set((first.split or {}).get("test_files") or [])
    if not mine or not theirs:
        return "not recorded"
    if mine == theirs:
        return f"same as {first_name}"
    if mine < theirs:
        return f"as {first_name}, less {len(theirs - mine)} left out"
    return f"{len(mine - theirs)} not in {first_name}'s"


def versions_frame(runs: Sequence) -> pd.DataFrame:
    """One row per completed run that recorded its version: the source, the version (``v1``, ``v2``... in the
    order they were first trained on, per source, with its edits since the original), the settings (in words),
    the held-out accuracy and which held-out photos it was scored on, next to the first run of the same source,
    seed, test share and split; the oldest version first."""
    from toptune_core.reports import setting_words

    names = version_names(runs)
    rows, first_of = [], {}
    for r in sorted(runs, key=lambda r: r.created):
        v = (r.params or {}).get("version")
        if r.status != "completed" or not isinstance(v, dict) or (r.metrics or {}).get("accuracy") is None:
            continue
        p = r.params or {}
        same_split = (v["source"], p.get("seed"), p.get("test_size"), p.get("split"), p.get("test_data"))
        first = first_of.setdefault(same_split, r)
        held_out = held_out_note(r, first, names.get((str(v["source"]), str(first.params["version"]["id"])), "v1"))
        rows.append({"source": Path(v["source"]).name, "source path": v["source"], "version id": v["id"],
                     "version": names.get((str(v["source"]), str(v["id"])), "?"),
                     "edits": describe_changes(v.get("summary") or {}), "setting": setting_words(r),
                     "accuracy": r.metrics["accuracy"], "held-out photos": held_out,
                     "photos": p.get("n_images"), "run": r.id, "created": r.created})
    columns = ["source", "version", "version id", "edits", "setting", "accuracy", "held-out photos", "photos", "run",
               "started"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows).sort_values("created", kind="stable")
    frame["started"] = [time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) for t in frame["created"]]
    return frame.sort_values(["source", "created"], kind="stable")[columns].reset_index(drop=True)


def added_photo_name(path) -> Optional[str]:
    """The user's file name of a photo they added (one stored as ``<home>/versions/<source>/photos/<sha256>.jpg``
    by ``DatasetVersions.add_photos``), from that edit list; None for any other photo."""
    p = Path(str(path))
    if p.parent.name != "photos" or p.parent.parent.parent.name != "versions":
        return None
    try:
        edits = json.loads((p.parent.parent / "edits.json").read_text()).get("edits", [])
    except (OSError, ValueError, AttributeError):
        return None
    for e in edits:
        if e.get("kind") == "add" and e.get("sha256") == p.stem:
            return e.get("name") or Path(e.get("path", p.name)).name
    return None
