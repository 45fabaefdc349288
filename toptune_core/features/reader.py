"""The decode-ahead reader: photos decoded in background threads, a bounded number of batches ahead.

``in_lanes`` is the CPU extraction's form of it: each of several "lane" threads
takes the next chunk and does all the work on it (decode, then the engine).

Feature extraction, the fine-tune (training, validation and test photos) and
the readability check all read photos through ``read_ahead``: ``load(chunk)``
runs in up to ``workers`` threads (Pillow and NumPy only), at most
``workers + 1`` chunks are decoded before the consumer takes them, and
chunks come out in order. Stopping early (cancel, error) drops the queued
chunks and waits for a running one, so no thread outlives the reader.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Sequence, TypeVar

C = TypeVar("C")
R = TypeVar("R")


def chunked(order: Sequence[int], size: int) -> list[list[int]]:
    """``order`` cut into consecutive lists of at most ``size`` items."""
    return [list(order[i:i + size]) for i in range(0, len(order), size)]


def read_ahead(chunks: Sequence[C], load: Callable[[C], R], workers: int,
               name: str = "decode") -> Iterator[tuple[C, R]]:
    """Yield ``(chunk, load(chunk))`` in order, decoding up to ``workers + 1`` chunks ahead in threads.

    With ``workers`` <= 0, each chunk is loaded in the calling thread, when it is needed.
    """
    if workers <= 0:
        for c in chunks:
            yield c, load(c)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        pending = deque(pool.submit(load, c) for c in chunks[:workers + 1])
        nxt = len(pending)
        for c in chunks:
            result = pending.popleft().result()
            if nxt < len(chunks):  # keep the decoders busy while the consumer works
                pending.append(pool.submit(load, chunks[nxt]))
                nxt += 1
            yield c, result
    finally:  # also on cancel: queued chunks are dropped, a running one is waited for
        pool.shutdown(wait=True, cancel_futures=True)


def in_lanes(chunks: Sequence[C], work: Callable[[C], R], lanes: int, start: Optional[Callable[[], None]] = None,
             name: str = "lane") -> Iterator[R]:
    """Yield ``work(chunk)`` for every chunk, in order, computed by ``lanes`` threads that each take the next
    chunk (``start()`` runs first in each thread). A lane does not start a chunk more than ``lanes + 1``
    ahead of the last one handed on, which bounds memory. Stopping early (cancel, error) stops and joins
    the threads; an exception in ``work`` is raised here, in order.
    """
    done: dict[int, object] = {}
    state = {"next": 0, "handed": 0, "stop": False}
    cond = threading.Condition()
    window = lanes + 1

    def lane() -> None:
        if start is not None:
            start()
        while True:
            with cond:
                while not state["stop"] and state["next"] < len(chunks) and state["next"] >= state["handed"] + window:
                    cond.wait()
                if state["stop"] or state["next"] >= len(chunks):
                    return
                k = state["next"]
                state["next"] += 1
            try:
                result: object = work(chunks[k])
            except BaseException as e:  # handed to the caller in order
                result = e
            with cond:
                done[k] = result
                cond.notify_all()

    workers = [threading.Thread(target=lane, name=f"{name}-{j}", daemon=True) for j in range(lanes)]
    for w in workers:
        w.start()
    try:
        for k in range(len(chunks)):
            with cond:
                while k not in done:
                    cond.wait()
                result = done.pop(k)
                state["handed"] = k + 1
                cond.notify_all()
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        for w in workers:
            w.join()
