"""The benchmark's small measuring tools: resident memory, load average, other processes' CPU use, the CPU's
name, timing a command in fresh processes, and picking an even spread of photos.

Nothing here imports torch; ``load_average`` is also used by ``compare``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


class RssSampler:
    """Samples resident memory every ``interval`` seconds in a thread; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self.start = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self.start = self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def load_average(unknown: str = "n/a") -> str:
    """The 1/5/15-minute load average as ``a / b / c``; ``unknown`` where the system has none."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return unknown


class OtherCpuUse:
    """How much CPU other processes used while this one ran: system-wide busy time (/proc/stat) minus this
    process's and its waited-for children's. The figure that says whether the timings are clean."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read() -> Optional[tuple[float, float, float, float]]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:3]) + sum(fields[5:7])) / tick  # user nice system irq softirq
        steal = (fields[7] if len(fields) > 7 else 0) / tick
        t = os.times()
        return time.monotonic(), busy, steal, t.user + t.system + t.children_user + t.children_system

    def result(self) -> Optional[tuple[float, float]]:
        """(average CPUs used by other processes, average CPUs stolen by the hypervisor), or None off Linux."""
        end = self._read()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[3] - self.start[3])
        return max(0.0, others / wall), (end[2] - self.start[2]) / wall


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (all of them if there are fewer)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def time_command(argv: list[str], env: dict, repeats: int) -> tuple[float, subprocess.CompletedProcess]:
    """Best wall-clock seconds of ``argv`` over ``repeats`` runs (it must succeed), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-400:]}")
        best = min(best, elapsed)
    return best, result
