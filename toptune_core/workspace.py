"""What the dashboard remembers (streamlit-free): the ``Workspace`` and the demo dataset choice.

``Workspace`` is what the dashboard remembers across browser reloads and
server restarts: the chosen dataset, the split settings and the ids of the
jobs and fine-tunes it started. It is a small JSON file in the data folder (``home``),
changed with a read-modify-write under a file lock and replaced atomically,
so two browser tabs never lose each other's changes or read half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Optional

from toptune_core.config import DEMO_DATASET, toptune_home
from toptune_core.files import locked

DEFAULT_STATE = {"dataset": None, "seed": 0, "test_size": 0.25, "split": "random", "jobs": {}, "finetune_run": None,
                 "last_run": None}


class Workspace:
    """The dashboard's remembered state, in ``<home>/dashboard.json``."""

    def __init__(self, home: Optional[str | Path] = None):
        self.home = Path(home) if home else toptune_home()
        self.path = self.home / "dashboard.json"

    def load(self) -> dict:
        """The state (defaults for anything missing; a damaged file reads as the defaults)."""
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict):
                raise ValueError
        except (OSError, ValueError):
            data = {}
        state = json.loads(json.dumps(DEFAULT_STATE))
        state.update({k: v for k, v in data.items() if k in DEFAULT_STATE})
        return state

    def _locked(self):
        return locked(self.home / ".dashboard.lock")

    def update(self, **changes) -> dict:
        """Change some keys (``jobs`` is merged key by key) and save; returns the new state."""
        with self._locked():
            state = self.load()
            for key, value in changes.items():
                if key not in DEFAULT_STATE:
                    raise KeyError(key)
                if key == "jobs":
                    state["jobs"] = {**state["jobs"], **value}
                else:
                    state[key] = value
            tmp = self.path.with_name(f".dashboard.{uuid.uuid4().hex[:6]}.tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, self.path)
        return state


def demo_choice() -> dict:
    """The dataset choice for the shipped demo dataset."""
    return {"kind": "demo", "path": str(DEMO_DATASET), "label": "Demo: bean leaf diseases (iBean, 300 photos)"}
