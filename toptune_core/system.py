"""This machine as both methods see it: available CPUs, the thread policy, and process identity.

Top-tuning and fine-tuning are compared on one chart, so they must use the
machine the same way. Both ask ``thread_policy()`` how many CPUs they may use
(the affinity mask, further capped by a cgroup CPU quota such as
``docker --cpus``) and how many torch threads to run; nothing else in the code
counts CPUs. ``process_start_token`` and ``pid_alive`` tell whether the process
that owns a run (a fine-tune's training process) is still the one that started it.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

#: Most CPU lanes an extraction uses; on bigger machines each lane gets several torch threads instead.
MAX_LANES = 8


def cgroup_cpu_quota() -> Optional[float]:
    """The cgroup CPU quota in CPUs (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (which cpusets and taskset narrow), further capped by a
    cgroup CPU quota (``docker --cpus``, Kubernetes limits), which the mask does not show."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


@dataclass(frozen=True)
class ThreadPolicy:
    """How a method uses the CPUs.

    ``cpus``: CPUs this process may use. ``training_threads``: torch threads of
    one model that trains or runs on its own (the fine-tune; one per CPU).
    ``lanes`` and ``lane_threads``: an extraction's parallel lanes (each
    decodes a batch and runs the model on it) and the torch threads of each;
    ``lanes * lane_threads`` never exceeds ``cpus``.
    """

    cpus: int
    training_threads: int
    lanes: int
    lane_threads: int

    def describe(self) -> str:
        return (f"{self.cpus} CPU(s): training on {self.training_threads} torch thread(s); extraction in "
                f"{self.lanes} lane(s) of {self.lane_threads} thread(s)")


def thread_policy(cpus: Optional[int] = None) -> ThreadPolicy:
    """The one CPU policy of both methods (``cpus`` overrides the count, for tests and benchmarks)."""
    cpus = max(1, cpus or available_cpus())
    lanes = min(cpus, MAX_LANES)
    return ThreadPolicy(cpus=cpus, training_threads=cpus, lanes=lanes, lane_threads=max(1, cpus // lanes))


def cuda_present() -> bool:
    """False when this machine certainly has no CUDA GPU (no NVIDIA driver device), decided without importing
    torch; True means torch should be asked (``torch.cuda.is_available()``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists() \
        or os.name != "posix" or not Path("/dev").is_dir()


_threads_lock = threading.Lock()
_threads_users = 0
_threads_default = 0


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU operators on ``n`` intra-op threads inside the block, then restore the setting.

    torch's setting is also a process-wide default that threads started later
    inherit (the dashboard runs every page in a new thread), and an
    extraction's lanes change it; so the default from before the first of any
    overlapping blocks is what is restored, even when blocks in several
    threads overlap.
    """
    global _threads_users, _threads_default
    import torch

    with _threads_lock:
        if _threads_users == 0:
            _threads_default = torch.get_num_threads()
        _threads_users += 1
        default = _threads_default
    torch.set_num_threads(n)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
        torch.set_num_threads(default)


@contextmanager
def nothing() -> Iterator[None]:
    """A context manager that does nothing (where a device needs no thread setting)."""
    yield


def process_start_token(pid: int) -> Optional[str]:
    """``<boot id>:<start time>`` of process ``pid`` (Linux), or None where that cannot be read.

    Two processes that got the same pid (one after the other, or after a reboot) have different tokens.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        start = stat_line.rsplit(")", 1)[1].split()[19]  # field 22, counted after "pid (comm)"
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def process_age() -> float:
    """Seconds since this process started (Linux: its start time against the uptime; elsewhere 0)."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start / os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        return 0.0


def pid_alive(pid: Optional[int], proc_start: Optional[str] = None) -> bool:
    """True if process ``pid`` exists and, when ``proc_start`` is known, is the same process that started the run."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if proc_start:
        now = process_start_token(pid)
        if now is not None and now != proc_start:
            return False  # the pid was reused by another process
    return True


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Dense linear algebra inside the block on one BLAS thread (the top classifiers' fits and predictions).

    Their matrices are small (about a thousand photos): on a machine whose cores other programs also use,
    OpenBLAS's threads wait for each other and a logistic-regression fit measured 2 s on two threads against
    0.06 s on one; the results are the same.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield
