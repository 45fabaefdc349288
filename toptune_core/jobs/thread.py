"""Background jobs for the dashboard: a worker thread, its progress, a cancel flag, its result.

Long work (feature extraction and training, downloads, unpacking a zip) runs in
a ``Job``: a plain Python thread that calls ``target(progress, should_cancel)``
with the core's usual callbacks. The thread only ever writes into its own job
object, under a lock; the dashboard reads a ``JobView`` snapshot of it from a
fragment that reruns on a timer. Nothing here imports streamlit, and no
streamlit call is made from a worker thread.

Jobs live in a process-wide ``JobRegistry`` keyed by job id, so a browser
reload (a new streamlit session in the same server process) finds its running
job again by id. Two browser tabs get two jobs with two ids; they share nothing
but the run store and the feature cache, which are safe for concurrent use
(SQLite transactions, a lock per cache entry). Each job has an ``owner`` (the
visitor who started it, on a shared server): looking a job up or listing jobs
with an owner only ever finds that owner's jobs.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import OrderedDict
from typing import Any, Callable, Optional

from toptune_core.errors import Cancelled, ToptuneError
from toptune_core.jobs.view import FINISHED, STATES, JobView  # noqa: F401  (re-exported)
from toptune_core.progress import CancelCheck, Progress, ProgressCallback

#: What a job runs: ``target(progress, should_cancel) -> result``.
JobTarget = Callable[[ProgressCallback, CancelCheck], Any]


class Job:
    """One piece of long work in a worker thread.

    ``target(progress, should_cancel)`` is called in the thread; ``progress``
    stores ``Progress`` events, ``should_cancel()`` turns true after
    ``cancel()``. The outcome is ``completed`` with ``result``, ``cancelled``
    (the target raised ``Cancelled``), or ``failed`` with ``error``, a one-line
    message for the user (a ``ToptuneError``'s text, or a plain sentence for an
    unexpected exception, whose traceback goes to ``details``).
    """

    def __init__(self, kind: str, title: str, target: JobTarget, *, params: Optional[dict] = None,
                 owner: Optional[str] = None):
        self.id = f"{kind}-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.kind, self.title, self.owner = kind, title, owner
        self.params = dict(params or {})
        self._target = target
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._state = "queued"
        self._stages: "OrderedDict[str, Progress]" = OrderedDict()
        self._result: Any = None
        self._error: Optional[str] = None
        self._details: Optional[str] = None
        self.created = time.time()
        self._started: Optional[float] = None
        self._finished: Optional[float] = None
        self._claims: set[str] = set()

    # --- the worker side ----------------------------------------------------------------------

    def start(self) -> "Job":
        """Start the worker thread (once); returns the job."""
        with self._lock:
            if self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._run, name=f"toptune-job-{self.id}", daemon=True)
        self._thread.start()
        return self

    def report(self, event: Progress) -> None:
        """The progress callback handed to the target: keeps the latest event of each stage."""
        with self._lock:
            self._stages[event.stage] = event

    def should_cancel(self) -> bool:
        """The cancel check handed to the target."""
        return self._cancel.is_set()

    def _run(self) -> None:
        with self._lock:
            self._state, self._started = "running", time.time()
        state, result, error, details = "completed", None, None, None
        try:
            result = self._target(self.report, self.should_cancel)
        except Cancelled as e:
            state, error = "cancelled", str(e) or "Cancelled."
        except ToptuneError as e:
            state, error = "failed", str(e)
        except Exception as e:  # a bug, not a user error: a plain line for the user, the details for a developer
            state = "failed"
            error = (f"Something unexpected went wrong ({type(e).__name__}). Nothing already saved was lost; "
                     "try again, and if it happens again, show the details to whoever maintains this tool.")
            details = traceback.format_exc()
        with self._lock:
            self._state, self._result, self._error, self._details = state, result, error, details
            self._finished = time.time()
        self._done.set()

    # --- the dashboard side -------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the job to stop; it stops at its next progress report."""
        self._cancel.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job has finished (or ``timeout`` seconds); True if it finished."""
        return self._done.wait(timeout)

    def claim(self, tag: str) -> bool:
        """True the first time ``tag`` is claimed for this job, False after: lets exactly one observer act
        on an outcome (e.g. select the dataset a finished download produced) however many pages see it."""
        with self._lock:
            if tag in self._claims:
                return False
            self._claims.add(tag)
            return True

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def view(self) -> JobView:
        """A snapshot of the job for drawing."""
        with self._lock:
            return JobView(self.id, self.kind, self.title, self._state, dict(self.params),
                           tuple(self._stages.values()), self._result, self._error, self._details,
                           self.created, self._started, self._finished, self._cancel.is_set())


class JobRegistry:
    """All jobs of this process, by id; finished jobs beyond ``keep_finished`` are forgotten, oldest first."""

    def __init__(self, keep_finished: int = 100):
        self.keep_finished = keep_finished
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, title: str, target: JobTarget, *, params: Optional[dict] = None,
               owner: Optional[str] = None) -> Job:
        """Create a job (of ``owner``), register it and start its worker thread."""
        job = Job(kind, title, target, params=params, owner=owner)
        with self._lock:
            self._jobs[job.id] = job
            self._prune()
        return job.start()

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]

    def get(self, job_id: Optional[str], owner: Optional[str] = None) -> Optional[Job]:
        """The job ``job_id``; with ``owner``, only if that owner started it (else None, as for an unknown id)."""
        if not job_id:
            return None
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and (owner is None or job.owner == owner) else None

    def list(self, kind: Optional[str] = None, *, active: Optional[bool] = None,
             owner: Optional[str] = None) -> list[Job]:
        """Jobs, newest first; ``kind``, ``active`` and ``owner`` filter them."""
        with self._lock:
            jobs = list(self._jobs.values())
        jobs = [j for j in reversed(jobs) if (kind is None or j.kind == kind) and (owner is None or j.owner == owner)]
        if active is not None:
            jobs = [j for j in jobs if (j.state not in FINISHED) == active]
        return jobs


#: The registry of this process (one streamlit server = one process, shared by all its sessions).
REGISTRY = JobRegistry()


def registry() -> JobRegistry:
    return REGISTRY
