"""The server's fine-tune queue: real training processes, one at a time, each visitor's place in the queue."""

from __future__ import annotations

import time

import pytest

from toptune_core.errors import LimitReached, ToptuneError
from toptune_core.jobs.process import FinetuneJob
from toptune_core.jobs.queue import FinetuneQueue
from toptune_core.runs.store import RunStore

SLOW = dict(epochs=30, head_epochs=1, batch_size=8, budget_seconds=None)  # runs until cancelled


def test_fine_tunes_wait_their_turn_one_at_a_time(small_dataset, tmp_path):
    queue = FinetuneQueue(poll=0.2)
    stores = {owner: tmp_path / owner for owner in "abc"}
    started = []
    a = queue.submit("a", small_dataset, store_root=stores["a"], on_start=started.append, **SLOW)
    assert a.run_id and started == [a.run_id] and queue.position(a) == 0, "a free slot: it starts at once"
    b = queue.submit("b", small_dataset, store_root=stores["b"], on_start=started.append, **SLOW)
    c = queue.submit("c", small_dataset, store_root=stores["c"], **SLOW)
    assert (queue.position(b), queue.position(c)) == (1, 2) and b.waiting and queue.running_count() == 1
    assert queue.waiting_ticket("b") is b and queue.ticket(b.id, "c") is None, "a ticket is only its owner's"
    with pytest.raises(LimitReached, match="already have a fine-tune waiting or running"):
        queue.submit("b", small_dataset, store_root=stores["b"], **SLOW)
    with pytest.raises(ToptuneError, match="Unknown fine-tune setting"):
        queue.submit("d", small_dataset, store_root=tmp_path / "d", learning_speed=3)
    assert not queue.cancel(c.id, "b"), "nobody else can take c out of the queue"
    assert queue.cancel(c.id, "c") and queue.position(c) == 0 and c.cancelled and not c.waiting
    assert RunStore(stores["b"]).list() == [], "nothing is recorded while it waits"

    FinetuneJob.attach(a.run_id, stores["a"]).cancel()
    deadline = time.monotonic() + 30
    while b.run_id is None:
        assert time.monotonic() < deadline, "the next fine-tune did not start"
        time.sleep(0.1)
    assert started == [a.run_id, b.run_id] and queue.position(b) == 0
    run_a = RunStore(stores["a"]).get(a.run_id)
    assert run_a.status == "cancelled", (run_a.status, run_a.error)
    assert RunStore(stores["b"]).get(b.run_id).status == "running" and queue.busy_owners() == {"b"}
    FinetuneJob.attach(b.run_id, stores["b"]).cancel()
    assert RunStore(stores["b"]).get(b.run_id).status == "cancelled" and queue.busy_owners() == set()
    assert not (stores["c"] / "runs.sqlite").exists(), "a fine-tune taken out of the queue never ran"


def test_a_stop_signal_is_not_swallowed_by_a_photo_decoder(small_dataset, monkeypatch):
    """SIGTERM in a training process raises wherever the process is; in the middle of decoding a batch of photos
    (whose ``except Exception`` turns any error into "unreadable photo") it must still stop the run."""
    import os
    import signal

    from toptune_core.backbones.pixels import PixelPipeline, eval_data_config
    from toptune_core.errors import ProcessStopped
    from toptune_core.jobs import process

    photos = sorted(small_dataset.rglob("*.jpg"))[:4]
    pipeline = PixelPipeline(eval_data_config("tf_efficientnet_lite0"))

    def load(i: int):
        if i == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the dashboard stopped while this photo was being decoded
            time.sleep(1)
        return pipeline.eval_pixels(photos[i])

    monkeypatch.setattr(process, "_TERMINATED", False)
    monkeypatch.setattr(process, "_CANCEL_PATH", None)
    previous = signal.signal(signal.SIGTERM, process._on_sigterm)
    try:
        with pytest.raises(ProcessStopped, match="was stopped") as stopped:
            pipeline.load_batch(photos, range(4), load=load)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.status == "interrupted"
