"""Progress reporting shared by every long job (download, extraction, fit, fine-tune).

Long work in ``toptune_core`` takes an optional ``progress`` callback and an
optional ``should_cancel`` callable. The command line draws the events as a
text bar; the dashboard copies them into a plain job object that a fragment
draws. Nothing here knows about either.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

from toptune_core.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress event: ``done`` of ``total`` ``unit`` in ``stage``."""

    stage: str  # "download", "extract", "fit", "train", "evaluate"
    done: float
    total: Optional[float]
    unit: str = "images"
    rate: Optional[float] = None  # units per second
    eta: Optional[float] = None  # seconds left
    elapsed: float = 0.0
    message: str = ""

    @property
    def fraction(self) -> Optional[float]:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def describe(self) -> str:
        """A one-line plain-words summary, e.g. ``extract: 120/300 images, 41.2 images/s, ETA 4 s``."""
        parts = [f"{self.stage}: {self.done:g}" + (f"/{self.total:g}" if self.total else "") + f" {self.unit}"]
        if self.rate:
            parts.append(f"{self.rate:.1f} {self.unit}/s")
        if self.eta is not None:
            parts.append(f"ETA {self.eta:.0f} s")
        if self.message:
            parts.append(self.message)
        return ", ".join(parts)


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


class ProgressMeter:
    """Turns ``update(done)`` calls into ``Progress`` events with rate and ETA."""

    def __init__(self, stage: str, total: Optional[float], callback: Optional[ProgressCallback],
                 unit: str = "images", should_cancel: Optional[CancelCheck] = None):
        self.stage, self.total, self.unit = stage, total, unit
        self.callback, self.should_cancel = callback, should_cancel
        self.start = time.perf_counter()

    def update(self, done: float, message: str = "") -> None:
        """Report ``done`` units finished; raise ``Cancelled`` if the user asked to stop."""
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled(f"{self.stage.capitalize()} was cancelled.")
        if self.callback is None:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        eta = (self.total - done) / rate if rate and self.total else None
        self.callback(Progress(self.stage, done, self.total, self.unit, rate, eta, elapsed, message))


def bytes_progress(callback: ProgressCallback, stage: str = "download", message: str = ""
                   ) -> Callable[[int, Optional[int], float], None]:
    """A ``progress(done_bytes, total_bytes_or_None, bytes_per_second)`` callback (downloads) that reports
    ``Progress`` events in MB, with the rate and the time left."""
    mb = 2 ** 20

    def on_bytes(done: int, total: Optional[int], rate: float) -> None:
        eta = (total - done) / rate if total and rate else None
        callback(Progress(stage, done / mb, total / mb if total else None, "MB", rate / mb if rate else None, eta,
                          0.0, message))

    return on_bytes


def check_cancel(should_cancel: Optional[CancelCheck], what: str = "The job") -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"{what} was cancelled.")


class TextProgressBar:
    """A progress callback that draws a one-line bar on a terminal (used by the CLI)."""

    def __init__(self, stream=None, width: int = 28):
        self.stream = stream or sys.stderr
        self.width = width
        self._last_stage = None
        self._last_draw = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.perf_counter()
        finished = p.total is not None and p.done >= p.total
        if p.stage == self._last_stage and not finished and now - self._last_draw < 0.2:
            return
        if self._last_stage is not None and p.stage != self._last_stage:
            self.stream.write("\n")
        self._last_stage, self._last_draw = p.stage, now
        frac = p.fraction
        bar = ("#" * int(frac * self.width)).ljust(self.width, ".") if frac is not None else "?" * self.width
        self.stream.write(f"\r[{bar}] {p.describe()}   ")
        if finished:
            self.stream.write("\n")
            self._last_stage = None
        self.stream.flush()


def progress_as_dict(p: Progress) -> dict:
    """A progress event as a JSON-ready dict, with its fraction and one-line description."""
    d = asdict(p)
    d["fraction"] = p.fraction
    d["text"] = p.describe()
    return d


def progress_from_dict(d: dict) -> Progress:
    """The ``Progress`` of a dict written by ``progress_as_dict`` (keys it does not know are ignored)."""
    known = {f.name for f in fields(Progress)}
    return Progress(**{k: v for k, v in d.items() if k in known})
