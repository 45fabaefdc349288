"""Configuration: where toptune keeps its data, and the limits it works within.

The environment is read once, at the edge (the command line, the dashboard,
the benchmark), by ``Settings.from_env()``; the object is then passed in.
Library code that is given no settings uses ``Settings.from_env()`` itself,
so a script keeps working with no set-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from toptune_core.errors import ToptuneError

#: The demo dataset shipped with the repository (300 iBean bean-leaf photos, MIT).
DEMO_DATASET = Path(__file__).resolve().parent.parent / "demo_data" / "ibean_leaf_disease"


@dataclass(frozen=True)
class Settings:
    """Where the data lives. ``home`` holds runs, the feature cache, downloads, uploads and the workspace."""

    home: Path
    eden_url: Optional[str] = None  # a mirror of Eden's download address (TOPTUNE_EDEN_URL)
    engine: str = "auto"  # the frozen backbone's inference engine (TOPTUNE_ENGINE; see features.engines)
    ray_address: Optional[str] = None  # a Ray cluster for feature extraction (TOPTUNE_RAY_ADDRESS, else RAY_ADDRESS)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("TOPTUNE_HOME") or Path.home() / ".toptune").expanduser()
        return cls(home=home, eden_url=env.get("TOPTUNE_EDEN_URL") or None,
                   engine=(env.get("TOPTUNE_ENGINE") or "auto").strip().lower(),
                   ray_address=env.get("TOPTUNE_RAY_ADDRESS") or env.get("RAY_ADDRESS") or None)

    def ensure_home(self) -> Path:
        """``home``, created on first use; a one-line error if it cannot be."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ToptuneError(f"Cannot create the data folder '{self.home}' ({e.strerror or e}). Set TOPTUNE_HOME "
                               "to a writable folder.") from None
        return self.home

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def runs_root(self) -> Path:
        return self.home

    @property
    def graphs_dir(self) -> Path:
        """Exported backbone graphs (ONNX), beside the feature cache."""
        return self.home / "graphs"

    @property
    def data_configs_dir(self) -> Path:
        return self.home / "data_configs"


def toptune_home() -> Path:
    """The data directory of the default settings (``$TOPTUNE_HOME`` or ``~/.toptune``), created on first use."""
    return Settings.from_env().ensure_home()
