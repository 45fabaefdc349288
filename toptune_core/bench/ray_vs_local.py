"""Feature extraction here and on Ray, side by side: the same dataset's features, each run timed.

``compare_where`` extracts the whole dataset into a fresh, temporary feature
cache on this machine ("local") and on Ray ("ray"), ``repeats`` times each,
alternating, and times it from the call to the cache entry: the wall time and
the start-up (until the first features arrive: loading the model; for Ray also
connecting or starting a runtime and starting the actors). No rate "after the
start-up" is given: Ray decodes ahead while its actors start and hands back
finished batches in bursts, so such a rate would flatter it; the wall time is
what a user waits. ``python -m toptune_core bench-ray`` prints the table.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from toptune_core.bench.measure import load_average
from toptune_core.bench.report import markdown_table
from toptune_core.config import Settings
from toptune_core.data.dataset import load_dataset
from toptune_core.errors import ToptuneError
from toptune_core.progress import Progress

WHERE = ("local", "ray", "ray-2x1")  # ray-2x1: a simulated cluster of two 1-CPU nodes on this machine


@dataclass
class WhereRun:
    where: str  # "local" or "ray"
    n: int
    wall_s: float
    startup_s: float  # until the first features arrived
    setup: str

    @property
    def rate(self) -> float:
        return self.n / self.wall_s


def extractor_for(where: str, backbone: str, settings: Settings, address: Optional[str] = None):
    """The extractor that runs ``where`` ("local" or "ray")."""
    if where == "ray":
        from toptune_core.features.distributed import RayFeatureExtractor

        return RayFeatureExtractor(backbone, address=address, settings=settings)
    from toptune_core.features.extractor import FeatureExtractor

    return FeatureExtractor(backbone, settings=settings)


def time_run(where: str, dataset, backbone: str, settings: Settings, address: Optional[str]) -> WhereRun:
    """One extraction of ``dataset`` into a fresh cache (``get_features``, as ``extract`` runs it)."""
    from toptune_core.features.cache import FeatureCache, get_features

    first: list[float] = []  # when the first features arrived

    def progress(p: Progress) -> None:
        if p.stage == "extract" and p.done and not first:
            first.append(time.perf_counter())

    extractor = extractor_for("ray" if where.startswith("ray") else where, backbone, settings, address)
    with tempfile.TemporaryDirectory(prefix="toptune-bench-ray-") as tmp, _place(where):
        start = time.perf_counter()
        get_features(dataset, extractor, FeatureCache(Path(tmp)), progress=progress)
        end = time.perf_counter()
    plan = getattr(extractor, "last_plan_", None)
    setup = plan.describe() if plan else extractor.plan().describe()
    return WhereRun(where, len(dataset), end - start, first[0] - start, f"{setup}; {extractor.engine_name}")


def _place(where: str):
    """A simulated 2 x 1-CPU cluster for "ray-2x1" (started before the clock runs), else nothing."""
    if where == "ray-2x1":
        from toptune_core.features.distributed import simulated_cluster

        return simulated_cluster([1, 1])
    return contextlib.nullcontext()


def compare_where(data: str | Path, backbone: str, where: list[str], *, repeats: int = 1,
                  address: Optional[str] = None, settings: Optional[Settings] = None,
                  log: Callable[[str], None] = lambda line: None) -> tuple[list[str], list[WhereRun]]:
    """(header lines, runs): each of ``where``, ``repeats`` times, alternating."""
    unknown = [w for w in where if w not in WHERE]
    if unknown:
        raise ToptuneError(f"Where to extract: {', '.join(WHERE)}; not {', '.join(repr(w) for w in unknown)}.")
    settings = settings or Settings.from_env()
    dataset = load_dataset(data)
    header = [f"toptune bench-ray: {backbone} on {Path(data).absolute()} ({len(dataset)} photos)",
              f"load average (1/5/15 min) before: {load_average()}"]
    runs = []
    for r in range(repeats):
        for place in where:
            log(f"run {r + 1} of {repeats}: {place}")
            runs.append(time_run(place, dataset, backbone, settings, address))
    header.append(f"load average after: {load_average()}")
    return header, runs


def where_table(runs: list[WhereRun]) -> str:
    cells = [("where", "run", "photos", "wall s", "photos/s", "÷ local photos/s", "first features after s",
              "setup; inference engine")]
    count: dict[str, int] = {}
    local = [r.rate for r in runs if r.where == "local"]
    for run in runs:
        count[run.where] = count.get(run.where, 0) + 1
        ratio = f"{run.rate / max(local):.2f}" if local else "-"
        cells.append((run.where, str(count[run.where]), str(run.n), f"{run.wall_s:.1f}", f"{run.rate:.1f}", ratio,
                      f"{run.startup_s:.1f}", run.setup))
    return markdown_table(cells)
