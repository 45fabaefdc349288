"""Jobs in a separate process: a recorded run trained by a process that can be cancelled at any moment.

The fine-tune runs here: the whole network trains for minutes, so it gets its
own process (multiprocessing "spawn"), which records its progress in the run
folder (``progress.json``) and its curve in the run store. ``view()`` gives
the same ``JobView`` as a thread job, so the pages follow both the same way.

The training process never outlives the program that started it: on Linux it
asks the kernel for SIGTERM when its parent goes (``prctl(PR_SET_PDEATHSIG)``),
and everywhere a watcher thread checks ``os.getppid()`` every second. SIGTERM
ends the run as ``interrupted`` with its curve so far (or, failing that within
a few seconds, the process exits and the run store marks the run interrupted
the next time it is opened, knowing the process is gone). The kernel signal is
tied to the *thread* that started the process, so every training process is
started from one long-lived launcher thread, never from a short-lived one such
as a Streamlit script run.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from toptune_core.errors import Cancelled, JobInterrupted, ProcessStopped, ToptuneError
from toptune_core.jobs.view import JobView
from toptune_core.progress import Progress, progress_as_dict, progress_from_dict
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.system import pid_alive, process_start_token

PROGRESS_FILE = "progress.json"
CANCEL_FILE = "cancel.request"
LOG_FILE = "job.log"


class _ProgressFile:
    """A progress callback that writes the latest event as JSON, atomically, at most every ``interval`` s."""

    def __init__(self, path: Path, interval: float = 0.2):
        self.path, self.interval = path, interval
        self._last = 0.0
        self._last_stage = None

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        important = p.stage != self._last_stage or getattr(p, "epoch_end", False) or \
            (p.total is not None and p.done >= p.total)
        if not important and now - self._last < self.interval:
            return
        self._last, self._last_stage = now, p.stage
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(progress_as_dict(p)))
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is best effort; the run record is what counts


_TERMINATED = False


def _on_sigterm(signum, frame) -> None:
    """In the training process: SIGTERM ends the run - as cancelled if the user asked, else as interrupted."""
    global _TERMINATED
    if _TERMINATED:
        return
    _TERMINATED = True
    if _CANCEL_PATH is not None and _CANCEL_PATH.exists():
        raise ProcessStopped("cancelled", "Fine-tuning was cancelled.")
    raise ProcessStopped("interrupted", "The fine-tuning process was stopped (the dashboard or the machine shut down).")


_CANCEL_PATH: Optional[Path] = None
_PR_SET_PDEATHSIG = 1
#: Seconds the training process has, once its parent is gone, to record its end before it exits anyway.
ORPHAN_GRACE_S = 10.0


def _watch_parent(parent_pid: int, every: float = 1.0) -> None:
    """In the training process: when the parent is gone (we were re-parented), SIGTERM ourselves; exit at the latest
    ``ORPHAN_GRACE_S`` seconds later."""
    while os.getppid() == parent_pid:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """In the training process (after the SIGTERM handler is set): end when ``parent_pid`` ends."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher thread below still covers it
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="toptune-parent-watch", daemon=True).start()


def _job_main(run_id: str, store_root: str, data: str, kwargs: dict, parent_pid: Optional[int] = None) -> None:
    """The training process: runs ``run_finetuning`` for an already recorded run."""
    global _CANCEL_PATH
    store = RunStore(store_root)
    folder = store.run_dir(run_id)
    _CANCEL_PATH = folder / CANCEL_FILE
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the dashboard's terminal stops the dashboard, not this
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    cancel_path = _CANCEL_PATH
    from toptune_core.finetune import run_finetuning

    try:
        run_finetuning(data, store=store, run_id=run_id, progress=_ProgressFile(folder / PROGRESS_FILE),
                       should_cancel=cancel_path.exists, **kwargs)
    except (Cancelled, JobInterrupted, ProcessStopped):
        pass
    except ToptuneError:
        pass  # recorded as failed with its one-line message
    except BaseException:
        try:
            (folder / LOG_FILE).write_text(traceback.format_exc())
        except OSError:
            pass


_JOBS: dict[str, "FinetuneJob"] = {}
#: The one long-lived thread that starts training processes (see the module docstring).
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toptune-launcher")


def _launch(process) -> None:
    """``process.start()`` on the launcher thread; its exception, if any, is raised here."""
    _LAUNCHER.submit(process.start).result()


class FinetuneJob:
    """A fine-tune running in a separate process (multiprocessing 'spawn'), that can be cancelled at any moment.

    ``start`` records the run and returns at once (``run_id`` is known); the
    process writes its latest progress to ``progress.json`` in the run folder
    and its curve to the run store after each epoch; ``status()`` reads them.
    ``attach(run_id)`` finds the job again after a browser reload or from
    another session. ``cancel()`` asks the process to stop (a flag file it
    checks inside every block of the network), then terminates it if it has
    not stopped within a few seconds; the run ends ``cancelled`` with the curve
    of its finished epochs. Earlier runs and the feature cache are never touched.
    """

    def __init__(self, run_id: str, store_root: Optional[str | Path] = None, process=None):
        self.run_id = run_id
        self.store_root = str(store_root) if store_root else None
        self._process = process

    @property
    def store(self) -> RunStore:
        return RunStore(self.store_root)

    @staticmethod
    def check(data: str | Path, **kwargs: Any) -> tuple:
        """Check the settings and the data folder before anything is recorded (a one-line ToptuneError);
        returns ``(backbone, hyper, dataset, test_dataset)``."""
        from toptune_core.data.split import load_data
        from toptune_core.finetune import FINETUNE_DEFAULTS, FineTuner
        from toptune_core.backbones.catalogue import DEFAULT_BACKBONE

        allowed = {"test_data", "backbone", "seed", "test_size", "split"} | set(FINETUNE_DEFAULTS)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ToptuneError(f"Unknown fine-tune setting(s): {', '.join(unknown)}.")
        hyper = {k: v for k, v in kwargs.items() if k in FINETUNE_DEFAULTS and k not in ("backbone", "seed")}
        backbone = kwargs.get("backbone", DEFAULT_BACKBONE)
        FineTuner(backbone=backbone, seed=kwargs.get("seed", 0), **hyper).check_params()
        dataset, test_dataset = load_data(data, kwargs.get("test_data"))
        return backbone, hyper, dataset, test_dataset

    @classmethod
    def start(cls, data: str | Path, *, store_root: Optional[str | Path] = None, **kwargs: Any) -> "FinetuneJob":
        """Check the settings and the data folder, record the run, start the training process; returns at once."""
        from toptune_core.finetune import _jsonable

        backbone, hyper, dataset, test_dataset = cls.check(data, **kwargs)
        store = RunStore(store_root)
        params = {"data": str(dataset.root), "test_data": str(test_dataset.root) if test_dataset else None,
                  "seed": kwargs.get("seed", 0), "test_size": kwargs.get("test_size", 0.25),
                  "split": kwargs.get("split", "random"), "hyper": _jsonable(hyper), "classes": dataset.classes}
        run = store.start(method="finetune", backbone=backbone, dataset=str(dataset.root), params=params)
        ctx = multiprocessing.get_context("spawn")
        child_kwargs = {k: (str(v) if k == "test_data" and v is not None else v) for k, v in kwargs.items()}
        process = ctx.Process(target=_job_main, args=(run.id, str(store.root), str(dataset.root), child_kwargs,
                                                      os.getpid()), name=f"finetune-{run.id}", daemon=True)
        try:
            _launch(process)
        except BaseException as e:
            store.finish(run.id, "failed", f"Could not start the training process ({e}).")
            raise ToptuneError(f"Could not start the training process ({e}).") from None
        # The run now belongs to the training process: the store judges "still running" by its pid (and, where
        # the store records it, the process's start token, so a reused pid is not mistaken for it).
        owner: dict[str, Any] = {"pid": process.pid, "host": socket.gethostname()}
        owner["proc_start"] = process_start_token(process.pid)
        store.update(run.id, **owner)
        job = cls(run.id, store.root, process)
        _JOBS[run.id] = job
        return job

    @classmethod
    def attach(cls, run_id: str, store_root: Optional[str | Path] = None) -> "FinetuneJob":
        """The job of a recorded fine-tune run (running or finished), e.g. after a browser reload."""
        job = _JOBS.get(run_id)
        if job is not None:
            return job
        run = RunStore(store_root).get(run_id)  # RunNotFound for an unknown id
        if run.method != "finetune":
            raise ToptuneError(f"Run {run_id} is a {run.method} run, not a fine-tune.")
        return cls(run_id, store_root)

    def is_alive(self) -> bool:
        """Whether the training process still runs."""
        return self._alive()

    def _alive(self, run: Optional[RunRecord] = None) -> bool:
        if self._process is not None:
            return self._process.is_alive()
        run = run or self.store.get(self.run_id)
        return run.host == socket.gethostname() and pid_alive(run.pid, run.proc_start)

    def _pid(self) -> Optional[int]:
        if self._process is not None:
            return self._process.pid
        run = self.store.get(self.run_id)
        return run.pid if run.host == socket.gethostname() else None

    def _record(self) -> RunRecord:
        """The run record, first ending it as ``interrupted`` if its process is gone without recording an end."""
        multiprocessing.active_children()  # reap finished training processes of this process (no zombies)
        store = self.store
        run = store.get(self.run_id)
        if run.status == "running" and not self._alive(run):
            run = store.get(self.run_id)  # it may have recorded its end just before exiting
            if run.status == "running":
                store.finish(self.run_id, "interrupted", "The training process stopped unexpectedly "
                                                         "(crash, out of memory or killed).")
                run = store.get(self.run_id)
        return run

    def _progress(self) -> Optional[dict]:
        """The latest progress event the training process wrote, as a dict (None before the first)."""
        try:
            return json.loads((self.store.run_dir(self.run_id) / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def status(self) -> dict:
        """{'state', 'progress' (latest event as a dict, or None), 'curve', 'error', 'metrics', 'run_id'}."""
        run = self._record()
        return {"run_id": self.run_id, "state": run.status, "progress": self._progress(), "curve": run.curve,
                "error": run.error, "metrics": run.metrics}

    def view(self) -> JobView:
        """The same snapshot a thread job gives (kind ``finetune``; ``result`` is the run id once completed)."""
        run = self._record()
        event = self._progress() if run.status == "running" else None
        stages = (progress_from_dict(event),) if event else ()
        cancel_requested = (self.store.run_dir(self.run_id) / CANCEL_FILE).exists()
        return JobView(self.run_id, "finetune", f"Fine-tune {self.run_id}", run.status, dict(run.params), stages,
                       self.run_id if run.status == "completed" else None, run.error, None, run.created,
                       run.created, run.finished, cancel_requested)

    @property
    def running(self) -> bool:
        return self.status()["state"] == "running"

    def cancel(self, grace: float = 2.0, kill_after: float = 3.0) -> None:
        """Stop the training now: the flag first, then SIGTERM after ``grace`` s, then SIGKILL. Recorded 'cancelled'."""
        store = self.store
        folder = store.run_dir(self.run_id)
        try:
            (folder / CANCEL_FILE).touch()
        except OSError:
            pass
        run = store.get(self.run_id)
        if run.status != "running":
            return
        pid = self._pid()
        self._wait_exit(grace)
        for sig, wait_s in ((signal.SIGTERM, kill_after), (signal.SIGKILL, 2.0)):
            if not self._alive():
                break
            if pid:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
            self._wait_exit(wait_s)
        multiprocessing.active_children()
        run = store.get(self.run_id)
        if run.status == "running" and not self._alive():
            store.finish(self.run_id, "cancelled", "Fine-tuning was cancelled.")

    def _wait_exit(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process is not None:
                self._process.join(timeout=0.05)
                if not self._process.is_alive():
                    return
            elif not self._alive():
                return
            else:
                time.sleep(0.05)

    def wait(self, timeout: Optional[float] = None) -> dict:
        """Block until the run is no longer running (or ``timeout`` seconds); returns ``status()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st["state"] != "running":
                if self._process is not None:
                    self._process.join(timeout=5)
                return st
            if deadline is not None and time.monotonic() >= deadline:
                return st
            if self._process is not None:
                self._process.join(timeout=0.25)
            else:
                time.sleep(0.25)
