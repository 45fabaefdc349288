"""Extraction engines side by side: the same dataset's features on this machine and on Ray, each timed.

``compare_engines`` extracts the whole dataset into a fresh, temporary feature
cache with each engine (``repeats`` times), and times it from the call to the
cache entry: the wall time and the start-up (until the first features arrive:
loading the model; for Ray also connecting or starting a runtime and starting
the actors). No rate "after the start-up" is given: Ray decodes ahead while its
actors start and hands back finished batches in bursts, so such a rate would
flatter it; the wall time is what a user waits. ``python -m toptune_core bench-engines``
prints the table.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from toptune_core.bench.measure import load_average
from toptune_core.bench.report import markdown_table
from toptune_core.config import Settings
from toptune_core.data.dataset import load_dataset
from toptune_core.progress import Progress


@dataclass
class EngineRun:
    engine: str
    n: int
    wall_s: float
    startup_s: float  # until the first features arrived
    setup: str

    @property
    def rate(self) -> float:
        return self.n / self.wall_s


def make_engine(engine: str, backbone: str, settings: Settings, address: Optional[str] = None):
    """The extractor of ``engine`` ("local" or "ray")."""
    if engine == "ray":
        from toptune_core.features.distributed import RayFeatureExtractor

        return RayFeatureExtractor(backbone, address=address, settings=settings)
    from toptune_core.features.extractor import FeatureExtractor

    return FeatureExtractor(backbone, settings=settings)


def time_engine(engine: str, dataset, backbone: str, settings: Settings, address: Optional[str]) -> EngineRun:
    """One extraction of ``dataset`` with ``engine`` into a fresh cache (``get_features``, as ``extract`` runs it)."""
    from toptune_core.features.cache import FeatureCache, get_features

    first: list[float] = []  # when the first features arrived

    def progress(p: Progress) -> None:
        if p.stage == "extract" and p.done and not first:
            first.append(time.perf_counter())

    extractor = make_engine(engine, backbone, settings, address)
    with tempfile.TemporaryDirectory(prefix="toptune-engines-") as tmp:
        start = time.perf_counter()
        get_features(dataset, extractor, FeatureCache(Path(tmp)), progress=progress)
        end = time.perf_counter()
    plan = getattr(extractor, "last_plan_", None)
    setup = plan.describe() if plan else extractor.plan().describe()
    return EngineRun(engine, len(dataset), end - start, first[0] - start, setup)


def compare_engines(data: str | Path, backbone: str, engines: list[str], *, repeats: int = 1,
                    address: Optional[str] = None, settings: Optional[Settings] = None,
                    log: Callable[[str], None] = lambda line: None) -> tuple[list[str], list[EngineRun]]:
    """(header lines, runs) of each engine, ``repeats`` times each, alternating engines."""
    settings = settings or Settings.from_env()
    dataset = load_dataset(data)
    header = [f"toptune bench-engines: {backbone} on {Path(data).absolute()} ({len(dataset)} photos)",
              f"load average (1/5/15 min) before: {load_average()}"]
    runs = []
    for r in range(repeats):
        for engine in engines:
            log(f"run {r + 1} of {repeats}: {engine}")
            runs.append(time_engine(engine, dataset, backbone, settings, address))
    header.append(f"load average after: {load_average()}")
    return header, runs


def engines_table(runs: list[EngineRun]) -> str:
    cells = [("engine", "run", "photos", "wall s", "photos/s", "first features after s", "setup")]
    count: dict[str, int] = {}
    for run in runs:
        count[run.engine] = count.get(run.engine, 0) + 1
        cells.append((run.engine, str(count[run.engine]), str(run.n), f"{run.wall_s:.1f}", f"{run.rate:.1f}",
                      f"{run.startup_s:.1f}", run.setup))
    return markdown_table(cells)
