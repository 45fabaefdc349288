"""What a page sees of a job, whatever runs it: a ``JobView`` snapshot and the job states.

A thread job (``jobs.thread.Job``) and a process job (``jobs.process.FinetuneJob``)
both answer ``view()`` with a ``JobView`` and take ``cancel()``, so one follow
loop draws either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from toptune_core.progress import Progress

#: Job states: queued -> running -> completed | cancelled | failed | interrupted (a process job whose process
#: stopped without recording an end: the program running it was stopped, or it crashed).
STATES = ("queued", "running", "completed", "cancelled", "failed", "interrupted")
FINISHED = frozenset({"completed", "cancelled", "failed", "interrupted"})


@dataclass(frozen=True)
class JobView:
    """A consistent copy of a job's state at one moment, safe to read without locks."""

    id: str
    kind: str
    title: str
    state: str
    params: dict
    stages: tuple[Progress, ...]  # the latest event of each stage, in the order the stages began
    result: Any
    error: Optional[str]
    details: Optional[str]  # traceback of an unexpected failure, for a developer
    created: float
    started: Optional[float]
    finished: Optional[float]
    cancel_requested: bool

    @property
    def active(self) -> bool:
        return self.state not in FINISHED

    @property
    def latest(self) -> Optional[Progress]:
        return self.stages[-1] if self.stages else None

    @property
    def elapsed(self) -> float:
        """Seconds the job has run (until now, or until it finished)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started
