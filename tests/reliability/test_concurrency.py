"""Load: ten simulated users classifying photos at once while a feature extraction runs, and ten sessions
writing to the run store at once.

The users share one ``Predictor`` and one loaded backbone with the extraction (the dashboard keeps one model
per backbone). Every answer is compared with the answer the same photo got when classified alone; memory is
sampled from /proc during the load. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import io
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toptune_core.data.dataset import load_dataset
from toptune_core.errors import ImageError
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.runs.store import RunStore
from toptune_core.config import DEMO_DATASET

from .realfiles import LEAF, encode, leaf_rgb

USERS = 10


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class _MemorySampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.baseline = self.peak = _rss_mb()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())


def _requests_of(user: int, photos: list[Path]) -> list[tuple[str, object]]:
    """What one user uploads: real photos as paths, JPEG bytes, PNG with alpha, EXIF-rotated, WebP, a bad file."""
    picks = [photos[(user * 5 + k) % len(photos)] for k in range(5)]
    rotated = Image.open(picks[3]).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        ("path", picks[0]),
        ("jpeg bytes", picks[1].read_bytes()),
        ("png with alpha", encode(Image.open(picks[2]).convert("RGBA"), "PNG")),
        ("exif-rotated jpeg", encode(rotated, "JPEG", quality=95, exif=exif)),
        ("webp", encode(Image.open(picks[4]).convert("RGB"), "WEBP", lossless=True)),
        ("truncated upload", LEAF.read_bytes()[: 1500 + 100 * user]),
    ]


def test_ten_users_classify_while_an_extraction_runs(trained, lite0_extractor, tmp_path: Path) -> None:
    predictor = trained.predictor
    photos = sorted(DEMO_DATASET.rglob("*.jpg"))[::7][:40]
    plans = {u: _requests_of(u, photos) for u in range(USERS)}
    # The answers each photo gets when classified alone, before the load.
    expected = {(u, i): predictor.predict(src) for u, reqs in plans.items()
                for i, (kind, src) in enumerate(reqs) if kind != "truncated upload"}

    # The extraction: the trained run's photos again, copied (a fresh cache), with the users' shared model.
    data = shutil.copytree(trained.data, tmp_path / "again")
    reference = FeatureCache(trained.home / "features")
    ref_key = next(p.name for p in reference.root.iterdir() if not p.name.startswith("."))
    extraction: dict = {}

    def extract() -> None:
        t0 = time.perf_counter()
        try:
            extraction["set"] = get_features(load_dataset(data), lite0_extractor, FeatureCache(tmp_path / "cache"))
        except BaseException as e:  # noqa: BLE001 - reported below
            extraction["error"] = e
        extraction["seconds"] = time.perf_counter() - t0

    latencies: list[float] = []
    failures: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(USERS + 1)

    def user(u: int) -> None:
        start.wait()
        for i, (kind, src) in enumerate(plans[u]):
            t0 = time.perf_counter()
            try:
                got = predictor.predict(io.BytesIO(src) if isinstance(src, bytes) else src)
            except ImageError as e:
                with lock:
                    (refused if kind == "truncated upload" else failures).append(f"user {u} {kind}: {e}")
                continue
            except BaseException as e:  # noqa: BLE001 - any other exception is a failure
                with lock:
                    failures.append(f"user {u} {kind}: {type(e).__name__}: {e}")
                continue
            finally:
                with lock:
                    latencies.append(time.perf_counter() - t0)
            want = expected.get((u, i))
            if want is None or got.label != want.label or not np.allclose(got.probabilities, want.probabilities,
                                                                         atol=1e-4):
                with lock:
                    failures.append(f"user {u} {kind}: got {got.top(3)}, alone it was {want and want.top(3)}")

    sampler = _MemorySampler()
    sampler.start()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(USERS)]
    extractor_thread = threading.Thread(target=extract)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    extractor_thread.start()
    start.wait()
    for t in threads + [extractor_thread]:
        t.join(300)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()

    n_requests = sum(len(p) for p in plans.values())
    lat = sorted(latencies)
    print(f"\nload test: {USERS} users, {n_requests} requests ({len(expected)} photos + {USERS} bad uploads) "
          f"while extracting {len(load_dataset(data))} photos, in {wall:.1f} s\n"
          f"  failures {len(failures)}, bad uploads refused {len(refused)}/{USERS}\n"
          f"  latency median {statistics.median(lat) * 1000:.0f} ms, p90 {lat[int(0.9 * (len(lat) - 1))] * 1000:.0f} ms,"
          f" worst {lat[-1] * 1000:.0f} ms\n"
          f"  extraction {extraction.get('seconds', float('nan')):.1f} s; memory {sampler.baseline:.0f} MB before,"
          f" peak {sampler.peak:.0f} MB (+{sampler.peak - sampler.baseline:.0f} MB)")
    assert not any(t.is_alive() for t in threads + [extractor_thread]), "a user or the extraction hung"
    assert failures == [], "\n".join(failures)
    assert len(refused) == USERS and all("truncated or corrupt" in r for r in refused)
    assert len(latencies) == n_requests
    assert "error" not in extraction, extraction.get("error")
    got = extraction["set"].entry
    want = reference.load(ref_key)
    assert got.relpaths == want.relpaths and got.ok.all()
    np.testing.assert_allclose(got.features, want.features, atol=1e-4)  # the same features as made alone
    assert sampler.peak - sampler.baseline < 1024, "memory grew by more than 1 GB under load"


def test_ten_sessions_write_the_run_store_at_once(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "home")
    errors: list[str] = []
    made: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(USERS + 2)  # the sessions, the reader and this thread

    def session(u: int) -> None:
        go.wait()
        for k in range(5):
            try:
                s = RunStore(tmp_path / "home")  # each session opens the store itself
                run = s.start(method="toptune", backbone="tf_efficientnet_lite0", dataset=f"user {u}",
                              classifier="rf", params={"u": u, "k": k})
                s.update(run.id, split={"n_test": k})
                s.complete(run.id, metrics={"accuracy": (u * 10 + k) / 100}, timings={}, split={"n_test": k})
                with lock:
                    made.append(run.id)
            except BaseException as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    def reader() -> None:
        go.wait()
        for _ in range(50):
            try:
                store.list()
                store.best()
            except BaseException as e:  # noqa: BLE001
                with lock:
                    errors.append(f"reader {type(e).__name__}: {e}")

    threads = [threading.Thread(target=session, args=(u,)) for u in range(USERS)]
    r = threading.Thread(target=reader)
    for t in threads + [r]:
        t.start()
    go.wait()
    for t in threads + [r]:
        t.join(120)
    assert errors == []
    runs = {x.id: x for x in store.list()}
    assert len(made) == len(runs) == USERS * 5
    assert {(x.params["u"], x.params["k"]) for x in runs.values()} == {(u, k) for u in range(USERS) for k in range(5)}
    assert all(x.status == "completed" and x.accuracy == (x.params["u"] * 10 + x.params["k"]) / 100
               for x in runs.values())
    assert store.best().accuracy == 0.94


def test_a_session_waiting_for_another_sessions_extraction_can_cancel(small_dataset, lite0_extractor,
                                                                     tmp_path: Path) -> None:
    """While one session holds the cache entry's lock (extracting), another waits; its Cancel works at once."""
    from toptune_core.errors import Cancelled

    cache = FeatureCache(tmp_path / "cache")
    ds = load_dataset(small_dataset)
    key = cache.key(ds.fingerprint(), lite0_extractor.cache_identity)
    asked = threading.Event()
    with cache.lock(key):  # the first session, busy extracting
        timer = threading.Timer(0.5, asked.set)
        timer.start()
        t0 = time.perf_counter()
        with pytest.raises(Cancelled, match="waiting for another session"):
            get_features(ds, lite0_extractor, cache, should_cancel=asked.is_set)
        waited = time.perf_counter() - t0
    assert 0.4 < waited < 5
    assert cache.load(key) is None and not list(cache.root.glob(".tmp-*"))
