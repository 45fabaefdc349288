"""The decode-ahead reader: photos decoded in background threads, a bounded number of batches ahead.

Feature extraction, the fine-tune (training, validation and test photos) and
the readability check all read photos through ``read_ahead``: ``load(chunk)``
runs in up to ``workers`` threads (Pillow and NumPy only), at most
``workers + 1`` chunks are decoded before the consumer takes them, and
chunks come out in order. Stopping early (cancel, error) drops the queued
chunks and waits for a running one, so no thread outlives the reader.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

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
