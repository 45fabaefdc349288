"""Configuration: where toptune keeps its data, and the limits it works within.

The environment is read once, at the edge (the command line, the dashboard,
the benchmark), by ``Settings.from_env()``; the object is then passed in.
Library code that is given no settings uses ``Settings.from_env()`` itself,
so a script keeps working with no set-up.

Shared mode (``TOPTUNE_SHARED=1``, what ``make serve`` sets) is for a server
that several visitors reach: each visitor gets a private workspace, visitors
never name a server path, and the ``Limits`` below apply. The variables:

- ``TOPTUNE_HOME``: the data folder (default ``~/.toptune``).
- ``TOPTUNE_SHARED``: ``1`` for shared mode.
- ``TOPTUNE_VIEWS``: the view set of feature extraction when none is chosen (``features.views``; default
  ``dihedral``; ``1`` extracts one view per photo, 8 times faster).
- ``TOPTUNE_GRAPHS``: where the exported backbone graphs are kept (default ``$TOPTUNE_HOME/graphs``); data
  folders that name the same one export each graph once (the test suite's do).
- ``TOPTUNE_DATA_ROOTS``: in shared mode, the server folders and ``s3://`` prefixes visitors may train on
  (``os.pathsep``-separated).
- ``TOPTUNE_MAX_PHOTO_MB``, ``TOPTUNE_MAX_ZIP_MB``, ``TOPTUNE_MAX_RUNS``, ``TOPTUNE_MAX_DISK_MB``,
  ``TOPTUNE_IDLE_HOURS``: the limits (defaults in ``LOCAL_LIMITS`` and ``SHARED_LIMITS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional

from toptune_core.data.storage import ObjectURL, is_url, split_roots
from toptune_core.errors import ToptuneError

#: The demo dataset shipped with the repository (300 iBean bean-leaf photos, MIT).
DEMO_DATASET = Path(__file__).resolve().parent.parent / "demo_data" / "ibean_leaf_disease"


@dataclass(frozen=True)
class Limits:
    """What one visitor may use. ``None``: no limit."""

    photo_mb: float = 50  # one photo to classify
    zip_mb: float = 2000  # one dataset zip
    runs: Optional[int] = None  # runs kept per workspace
    disk_mb: Optional[float] = None  # disk per workspace (runs, uploads)
    jobs: Optional[int] = None  # running background jobs per visitor (top-tune, download, unzip)
    idle_hours: Optional[float] = None  # a workspace idle this long is removed, with its files

    #: The environment variable of each limit.
    ENV = {"photo_mb": "TOPTUNE_MAX_PHOTO_MB", "zip_mb": "TOPTUNE_MAX_ZIP_MB", "runs": "TOPTUNE_MAX_RUNS",
           "disk_mb": "TOPTUNE_MAX_DISK_MB", "idle_hours": "TOPTUNE_IDLE_HOURS"}

    def with_env(self, env: Mapping[str, str]) -> "Limits":
        """These limits, with the ones the environment sets (a one-line error for a value that is not a number)."""
        changes = {}
        for name, var in self.ENV.items():
            raw = (env.get(var) or "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
                if not value > 0:
                    raise ValueError
            except ValueError:
                raise ToptuneError(f"{var} must be a number above 0 (got '{raw}').") from None
            changes[name] = int(value) if name == "runs" else value
        return replace(self, **changes)


#: Local mode: one user on their own computer; the upload sizes are the only limits.
LOCAL_LIMITS = Limits()
#: Shared mode (a demo or field server): every limit on.
SHARED_LIMITS = Limits(photo_mb=15, zip_mb=200, runs=30, disk_mb=1000, jobs=1, idle_hours=24)

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Where the data lives. ``home`` holds runs, the feature cache, downloads, uploads and the workspace;
    in shared mode also ``visitors/`` (one private folder per visitor) and ``showcase/`` (runs every visitor
    sees, read-only)."""

    home: Path
    eden_url: Optional[str] = None  # a mirror of Eden's download address (TOPTUNE_EDEN_URL)
    engine: str = "auto"  # the frozen backbone's inference engine (TOPTUNE_ENGINE; see features.engines)
    precision: str = "auto"  # the engine's precision: auto (bf16 where the CPU has it), f32, bf16 (TOPTUNE_PRECISION)
    views: Optional[str] = None  # the view set features are extracted with (TOPTUNE_VIEWS; None: views.DEFAULT_VIEWS)
    ray_address: Optional[str] = None  # a Ray cluster for feature extraction (TOPTUNE_RAY_ADDRESS, else RAY_ADDRESS)
    shared: bool = False  # shared mode (TOPTUNE_SHARED=1)
    data_roots: tuple = ()  # the server folders (Path) and s3:// prefixes (ObjectURL) visitors may use (TOPTUNE_DATA_ROOTS)
    limits: Limits = field(default_factory=Limits)
    graphs: Optional[Path] = None  # the exported backbone graphs (TOPTUNE_GRAPHS; None: home/graphs)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("TOPTUNE_HOME") or Path.home() / ".toptune").expanduser()
        shared = (env.get("TOPTUNE_SHARED") or "").strip().lower() in _TRUE
        roots = tuple(ObjectURL(p) if is_url(p) else Path(p).expanduser().absolute()
                      for p in split_roots(env.get("TOPTUNE_DATA_ROOTS") or ""))
        limits = (SHARED_LIMITS if shared else LOCAL_LIMITS).with_env(env)
        return cls(home=home, eden_url=env.get("TOPTUNE_EDEN_URL") or None, shared=shared, data_roots=roots,
                   limits=limits, engine=(env.get("TOPTUNE_ENGINE") or "auto").strip().lower(),
                   precision=(env.get("TOPTUNE_PRECISION") or "auto").strip().lower(),
                   views=(env.get("TOPTUNE_VIEWS") or "").strip() or None,
                   ray_address=env.get("TOPTUNE_RAY_ADDRESS") or env.get("RAY_ADDRESS") or None,
                   graphs=Path(env["TOPTUNE_GRAPHS"]).expanduser() if env.get("TOPTUNE_GRAPHS") else None)

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
        """Exported backbone graphs (ONNX), beside the feature cache unless ``TOPTUNE_GRAPHS`` names a folder."""
        return self.graphs or self.home / "graphs"

    @property
    def data_configs_dir(self) -> Path:
        return self.home / "data_configs"

    @property
    def visitors_dir(self) -> Path:
        """Shared mode: one private folder per visitor."""
        return self.home / "visitors"

    @property
    def showcase_dir(self) -> Path:
        """Shared mode: the run store of the runs the operator shows every visitor (read-only for them)."""
        return self.home / "showcase"


def toptune_home() -> Path:
    """The data directory of the default settings (``$TOPTUNE_HOME`` or ``~/.toptune``), created on first use."""
    return Settings.from_env().ensure_home()
