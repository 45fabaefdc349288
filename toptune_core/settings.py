"""Where toptune keeps its data (runs, feature cache, downloads)."""

from __future__ import annotations

import os
from pathlib import Path

#: The demo dataset shipped with the repository (300 iBean bean-leaf photos, MIT).
DEMO_DATASET = Path(__file__).resolve().parent.parent / "demo_data" / "ibean_leaf_disease"


def toptune_home() -> Path:
    """The data directory: ``$TOPTUNE_HOME`` or ``~/.toptune``. Created on first use."""
    home = Path(os.environ.get("TOPTUNE_HOME") or Path.home() / ".toptune").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .errors import ToptuneError

        raise ToptuneError(f"Cannot create the data folder '{home}' ({e.strerror or e}). Set TOPTUNE_HOME to a "
                           "writable folder.") from None
    return home
