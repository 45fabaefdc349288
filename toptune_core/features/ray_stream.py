"""The batches of a Ray extraction streamed back to the driver (``features.distributed``): consumed in a thread of
their own so that a cancel or a stall is noticed at once; one Ray extraction at a time in a process (they share its
one Ray connection).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, Optional

from toptune_core.errors import Cancelled, ToptuneError
from toptune_core.features.cluster_work import RayPlan
from toptune_core.features.ray_connect import stall_message, worker_error
from toptune_core.progress import CancelCheck, check_cancel

_ONE_AT_A_TIME = threading.Lock()  # Ray extractions of this process share one Ray connection: one at a time


def take_the_slot(should_cancel: Optional[CancelCheck]) -> threading.Lock:
    """Acquire this process's one Ray slot (waiting can be cancelled); the caller hands it on or releases it."""
    while not _ONE_AT_A_TIME.acquire(timeout=0.1):
        if should_cancel is not None and should_cancel():
            raise Cancelled("Feature extraction was cancelled (while waiting for another Ray extraction).")
    return _ONE_AT_A_TIME


class Executors:
    """A Ray Data execution callback (``DataContext.custom_execution_callback_classes``): the executor each
    thread started, so that a cancel can shut it down at once. Without it, Ray Data stops only when its
    iterator closes, at the next batch: after the actors have loaded their models, seconds later."""

    running: dict[Optional[int], object] = {}

    def before_execution_starts(self, executor) -> None:
        self.running[threading.get_ident()] = executor

    def on_execution_step(self, executor) -> None:
        pass

    def after_execution_succeeds(self, executor) -> None:
        self._forget(executor)

    def after_execution_fails(self, executor, error: Exception) -> None:
        self._forget(executor)

    def _forget(self, executor) -> None:
        for thread, running in list(self.running.items()):
            if running is executor:
                self.running.pop(thread, None)


class BatchStream:
    """The Ray dataset's batches, consumed in a thread of their own so that the caller can poll for cancel.

    ``batches()`` yields them (numpy dicts); a pipeline failure is raised as one
    line. ``stop()`` shuts the pipeline down (its tasks and actors) and the
    thread ends; the thread releases ``slot`` when Ray has stopped.
    """

    _END = object()

    def __init__(self, dataset, slot: threading.Lock, stall_seconds: float, plan: RayPlan):
        self._stall_seconds, self._plan = stall_seconds, plan
        self._queue: "queue.Queue" = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._slot = slot
        self._thread = threading.Thread(target=self._run, args=(dataset,), name="ray-extract", daemon=True)
        self._thread.start()

    def _run(self, dataset) -> None:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                if self._stop.is_set():
                    break  # leaving the loop closes Ray Data's iterator, which shuts its executor down
                self._put(batch)
            self._put(self._END)
        except BaseException as e:
            self._put(e)
        finally:
            self._slot.release()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def batches(self, should_cancel: Optional[CancelCheck]) -> Iterator[dict]:
        """The batches as they arrive; ``should_cancel`` is polled while waiting (``Cancelled``); no batch for
        ``stall_seconds`` is one ``ToptuneError`` naming what Ray could not place."""
        last = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                check_cancel(should_cancel, "Extract")
                if not self._thread.is_alive() and self._queue.empty():
                    raise ToptuneError("The Ray extraction stopped without an answer; see the Ray logs.")
                if time.monotonic() - last > self._stall_seconds:
                    raise ToptuneError(stall_message(self._stall_seconds, self._plan)) from None
                continue
            last = time.monotonic()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise worker_error(item) from None
            yield item

    def stop(self) -> None:
        """Stop the pipeline now: ``Executors`` knows this thread's Ray Data executor."""
        if self._stop.is_set():
            return
        self._stop.set()
        executor = Executors.running.get(self._thread.ident)
        if executor is not None:  # ends the tasks and actors now, and wakes the waiting iterator
            try:
                executor.shutdown(force=True)
            except Exception:  # it may be shutting down already; the iterator then closes at the next batch
                pass
