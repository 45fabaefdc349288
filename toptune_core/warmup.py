"""A live demo starts warm: the demo dataset's features extracted in the background as the server starts.

``make serve`` (shared mode) runs ``python -m toptune_core warm-demo`` beside
the dashboard. It fills the shared feature cache with what the first click on
the demo needs: the default features of every photo (all views,
``features.cache.get_features``) and the near-duplicate reference
(``leakage.reference_features``), so the first visitor's top-tune of the demo is
a cache hit (one stage, seconds). A visitor who clicks before it is done waits
for the same cache entry (its lock), never extracts twice. It writes its state
to ``$TOPTUNE_HOME/warm-up.json`` as it goes (``warm_up_status``), which the Home
page shows while it is warming.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from toptune_core.config import Settings
from toptune_core.files import write_atomic
from toptune_core.progress import Progress

STATUS_FILE = "warm-up.json"


def warm_up(settings: Settings, folder: str | Path, *, views: Optional[str] = None) -> dict:
    """Extract ``folder``'s default features (``views``: the settings' default set) and its near-duplicate
    reference into the feature cache of ``settings``, writing the state as it goes; returns the final state."""
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, DEFAULT_RESOLUTION
    from toptune_core.data.dataset import load_dataset
    from toptune_core.features.cache import FeatureCache, get_features
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.leakage import reference_features

    settings.ensure_home()
    path = settings.home / STATUS_FILE
    state = {"state": "running", "pid": os.getpid(), "folder": str(folder), "started": time.time(), "done": 0,
             "total": None}
    last = [0.0]

    def report(event: Progress) -> None:
        if event.stage == "extract" and time.monotonic() - last[0] > 1.0:
            last[0] = time.monotonic()
            state.update(done=event.done, total=event.total)
            write_atomic(path, json.dumps(state).encode())

    write_atomic(path, json.dumps(state).encode())
    try:
        dataset = load_dataset(folder)
        extractor = FeatureExtractor(DEFAULT_BACKBONE, settings=settings, views=views or settings.views,
                                     resolution=DEFAULT_RESOLUTION.get(DEFAULT_BACKBONE))
        cache = FeatureCache(settings=settings)
        entry = get_features(dataset, extractor, cache, progress=report).entry
        reference_features(dataset, np.ones(len(dataset), dtype=bool), cache=cache, extractor=extractor,
                           progress=report)
        state.update(state="ready", done=len(dataset), total=len(dataset), photos=int(entry.ok.sum()))
    except Exception as e:  # noqa: BLE001 - the state says what went wrong; the dashboard runs regardless
        state.update(state="failed", error=str(e) or type(e).__name__)
    state["finished"] = time.time()
    write_atomic(path, json.dumps(state).encode())
    return state


def warm_up_status(settings: Settings) -> Optional[dict]:
    """The warm-up's state (``state``: running / ready / failed, ``done`` of ``total`` photos), or None when none
    was started here. A "running" warm-up whose process is gone reads as "stopped"."""
    from toptune_core.system import pid_alive

    try:
        state = json.loads((settings.home / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("state") == "running" and not pid_alive(state.get("pid")):
        state["state"] = "stopped"
    return state
