"""The server's fine-tune queue: one fine-tune trains at a time, the others wait their turn, first come first served.

A fine-tune trains every layer of a network and takes the whole machine for
minutes, so the dashboard runs them one at a time. ``submit`` checks the
settings and the data at once (a bad setting is one line and nothing is
queued); the fine-tune starts as soon as the slot is free, and until then
``position`` says where it is in the queue. A dispatcher thread starts the next
one when the running one ends, whether or not anyone is watching. One queue per
process (``finetune_queue()``): the dashboard is one process for all its
visitors. Nothing here imports streamlit.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from toptune_core.errors import LimitReached, ToptuneError
from toptune_core.jobs.process import FinetuneJob


@dataclass
class Ticket:
    """One fine-tune asked for: waiting, then started (``run_id``), or it could not start (``error``)."""

    id: str
    owner: str
    data: str
    store_root: str
    kwargs: dict
    created: float = field(default_factory=time.time)
    on_start: Optional[Callable[[str], None]] = None  # called with the run id when it starts
    run_id: Optional[str] = None
    error: Optional[str] = None
    cancelled: bool = False

    @property
    def waiting(self) -> bool:
        return self.run_id is None and self.error is None and not self.cancelled


class FinetuneQueue:
    """Fine-tunes of every visitor of this process, ``slots`` at a time (one by default)."""

    def __init__(self, slots: int = 1, poll: float = 0.5):
        self.slots, self.poll = slots, poll
        self._cond = threading.Condition()
        self._waiting: list[Ticket] = []
        self._running: dict[str, tuple[Ticket, FinetuneJob]] = {}
        self._tickets: dict[str, Ticket] = {}
        self._dispatcher: Optional[threading.Thread] = None

    def submit(self, owner: str, data: str | Path, *, store_root: str | Path,
               on_start: Optional[Callable[[str], None]] = None, **kwargs: Any) -> Ticket:
        """Queue a fine-tune of ``data`` for ``owner`` (recorded in ``store_root`` once it starts); it starts now
        if the slot is free. One waiting or running fine-tune per owner (``LimitReached``)."""
        FinetuneJob.check(data, **kwargs)
        with self._cond:
            self._reap()
            if owner in self.busy_owners():
                raise LimitReached("You already have a fine-tune waiting or running; one at a time per visitor. "
                                   "Wait for it to finish, or cancel it.")
            ticket = Ticket(uuid.uuid4().hex[:12], owner, str(data), str(store_root), dict(kwargs), on_start=on_start)
            self._tickets[ticket.id] = ticket
            self._waiting.append(ticket)
            self._start_next()
            self._cond.notify_all()
        self._ensure_dispatcher()
        return ticket

    def ticket(self, ticket_id: Optional[str], owner: str) -> Optional[Ticket]:
        """The ticket ``ticket_id`` if ``owner`` holds it (else None, as for an unknown id)."""
        with self._cond:
            t = self._tickets.get(ticket_id or "")
        return t if t is not None and t.owner == owner else None

    def waiting_ticket(self, owner: str) -> Optional[Ticket]:
        """``owner``'s fine-tune that is waiting for the slot, if any."""
        with self._cond:
            return next((t for t in self._waiting if t.owner == owner), None)

    def position(self, ticket: Ticket) -> int:
        """1 for the next to start, 2 after it...; 0 once started (or no longer waiting)."""
        with self._cond:
            return self._waiting.index(ticket) + 1 if ticket in self._waiting else 0

    def running_count(self) -> int:
        with self._cond:
            self._reap()
            return len(self._running)

    def busy_owners(self) -> set[str]:
        """Owners with a fine-tune waiting or running."""
        with self._cond:
            self._reap()
            return {t.owner for t in self._waiting} | {t.owner for t, _ in self._running.values()}

    def cancel(self, ticket_id: str, owner: str) -> bool:
        """Take ``owner``'s waiting fine-tune out of the queue; True if it was waiting. (A running one is cancelled
        through its ``FinetuneJob``.)"""
        with self._cond:
            t = self._tickets.get(ticket_id)
            if t is None or t.owner != owner or t not in self._waiting:
                return False
            self._waiting.remove(t)
            t.cancelled = True
            return True

    # --- the dispatcher -----------------------------------------------------------------------------

    def _reap(self) -> None:
        """Forget running fine-tunes that have ended (their run recorded an end, or their process is gone; a
        process can take a moment to exit after recording its end), and tickets finished over an hour ago."""
        for tid, (_, job) in list(self._running.items()):
            if not job.is_alive() or job.status()["state"] != "running":
                del self._running[tid]
        old = time.time() - 3600
        for tid, t in list(self._tickets.items()):
            if not t.waiting and tid not in self._running and t.created < old:
                del self._tickets[tid]

    def _start_next(self) -> None:
        """Start waiting fine-tunes while a slot is free (called with the lock held)."""
        self._reap()
        while self._waiting and len(self._running) < self.slots:
            t = self._waiting.pop(0)
            try:
                job = FinetuneJob.start(t.data, store_root=t.store_root, **t.kwargs)
            except ToptuneError as e:
                t.error = str(e)
                continue
            except Exception as e:  # keep the queue going for everyone else
                t.error = f"The fine-tune could not start ({type(e).__name__}: {e})."
                continue
            t.run_id = job.run_id
            self._running[t.id] = (t, job)
            if t.on_start is not None:
                try:
                    t.on_start(job.run_id)
                except Exception:
                    pass  # a convenience (remembering the run); the run itself is recorded

    def _ensure_dispatcher(self) -> None:
        with self._cond:
            if self._dispatcher is not None and self._dispatcher.is_alive():
                return
            self._dispatcher = threading.Thread(target=self._dispatch, name="toptune-finetune-queue", daemon=True)
            self._dispatcher.start()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(self.poll)
                if self._waiting:
                    self._start_next()


#: The queue of this process (one streamlit server = one process, shared by all its sessions).
QUEUE = FinetuneQueue()


def finetune_queue() -> FinetuneQueue:
    return QUEUE
