"""Faults: processes killed mid-job, two sessions on one cache entry, a full disk, a read-only data folder,
and crashes in the middle of run-store writes.

Each fault is real: a real ``python -m toptune_core`` (or a small script) is started on real photos with its
own ``TOPTUNE_HOME``, then SIGKILLed at a moment read from its own progress output, or run under a file-size
limit, on a full tmpfs, or without the capability that lets root write anywhere. Afterwards the data folder
is checked: no cache entry that reads as complete but is not, earlier runs byte-for-byte unchanged, the
killed run shown as ``interrupted`` the next time the store is opened, and a rerun that succeeds.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from tests.conftest import copy_subset
from toptune_core.errors import ToptuneError
from toptune_core.features.cache import FeatureCache
from toptune_core.runs.store import RunStore
from toptune_core.config import DEMO_DATASET
from toptune_core.experiment import run_toptuning

from .realfiles import REPO, assert_one_line_error, cli_env, run_cli


# --- helpers ---------------------------------------------------------------------------------------------

class Child:
    """A subprocess whose stdout and stderr are collected in the background (progress bars use '\\r')."""

    def __init__(self, args: list[str], env: dict, **kw):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO, **kw)
        self.out = bytearray()
        self.err = bytearray()
        self._threads = [threading.Thread(target=self._pump, args=(s, buf), daemon=True)
                         for s, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, buf: bytearray) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            buf.extend(chunk)

    def wait_for(self, pattern: str, timeout: float = 300, stream: str = "err") -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search((self.err if stream == "err" else self.out).decode(errors="replace"))
            if m:
                return m
            if self.proc.poll() is not None:
                time.sleep(0.2)
                m = rx.search((self.err if stream == "err" else self.out).decode(errors="replace"))
                if m:
                    return m
                raise AssertionError(f"exited ({self.proc.returncode}) before {pattern!r}:\n{self.text()}")
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(30)
        for t in self._threads:
            t.join(5)
        return rc

    def wait(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def text(self) -> str:
        return self.out.decode(errors="replace") + "\n--- stderr ---\n" + self.err.decode(errors="replace")


def cli_child(args: list[str], home: Path, **kw) -> Child:
    return Child([sys.executable, "-m", "toptune_core", *args], cli_env(home), **kw)


def file_hashes(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not skip(p)}


class Snapshot:
    """Everything about the runs and cache entries present now, to compare after a fault."""

    def __init__(self, home: Path):
        store = RunStore(home)
        self.home = home
        self.runs = {r.id: (r.status, r.metrics, r.params, r.split, r.timings, r.model_sha256) for r in store.list()}
        self.files = {rid: file_hashes(store.run_dir(rid)) for rid in self.runs}
        self.entries = self._entries()

    def _entries(self) -> dict[str, dict[str, str]]:
        root = self.home / "features"
        return {p.name: file_hashes(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}

    def assert_intact(self) -> None:
        store = RunStore(self.home)
        for rid, record in self.runs.items():
            r = store.get(rid)
            assert (r.status, r.metrics, r.params, r.split, r.timings, r.model_sha256) == record, rid
            assert file_hashes(store.run_dir(rid)) == self.files[rid], rid
        now = self._entries()
        for key, files in self.entries.items():
            assert now.get(key) == files, f"cache entry {key} changed"


def assert_cache_has_no_half_entry(home: Path) -> None:
    """Every cache folder that is not hidden (a temporary) loads as a complete entry."""
    cache = FeatureCache(home / "features")
    for p in cache.root.iterdir():
        if not p.name.startswith("."):
            assert p.is_dir() and cache.load(p.name) is not None, f"half-written cache entry {p.name}"


def integrity_ok(home: Path) -> None:
    conn = sqlite3.connect(home / "runs.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


@pytest.fixture
def home_with_earlier_run(toptune_home: Path, tmp_path: Path, lite0_extractor) -> Iterator[tuple[Path, str]]:
    """The test's data folder holding one completed top-tuning run (4 photos per class) and its cache entry."""
    data = copy_subset(DEMO_DATASET, tmp_path / "earlier", 4)
    run = run_toptuning(data, classifier="logreg", store=RunStore(toptune_home),
                        cache=FeatureCache(toptune_home / "features"), extractor=lite0_extractor)
    assert run.status == "completed"
    yield toptune_home, run.id


# --- killed mid-job -------------------------------------------------------------------------------------

def test_kill_during_feature_extraction_then_rerun(home_with_earlier_run, tmp_path: Path, lite0_extractor) -> None:
    home, earlier = home_with_earlier_run
    before = Snapshot(home)
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 20)  # 60 photos: several batches
    child = cli_child(["toptune", "--data", str(data), "--json", str(tmp_path / "killed.json")], home)
    m = child.wait_for(r"extract: ([1-9]\d*)/60 images")  # the first batch is done
    assert child.kill() == -signal.SIGKILL
    assert int(m.group(1)) < 60

    assert_cache_has_no_half_entry(home)
    assert set(Snapshot(home).entries) == set(before.entries), "the killed extraction left an entry"
    store = RunStore(home)  # opening the store notices the dead process
    killed = [r for r in store.list() if r.id != earlier]
    assert [r.status for r in killed] == ["interrupted"] and "stopped" in killed[0].error
    before.assert_intact()
    assert not (tmp_path / "killed.json").exists()

    # Starting again (in this process, with the already loaded model): a clean, complete extraction and run.
    rerun = run_toptuning(data, store=RunStore(home), cache=FeatureCache(home / "features"), extractor=lite0_extractor)
    assert rerun.status == "completed" and rerun.timings["cache_hit"] is False
    assert rerun.split["n_train"] + rerun.split["n_test"] == 60
    assert len(Snapshot(home).entries) == len(before.entries) + 1
    assert_cache_has_no_half_entry(home)
    before.assert_intact()


def test_kill_during_fine_tune_then_rerun(home_with_earlier_run, tmp_path: Path) -> None:
    home, earlier = home_with_earlier_run
    before = Snapshot(home)
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 12)
    child = cli_child(["finetune", "--data", str(data), "--epochs", "20", "--head-epochs", "1", "--batch-size", "6",
                       "--freeze-blocks", "1", "--budget-seconds", "none"], home)
    child.wait_for(r"epoch [2-9]\d*/\d+")  # the head-only epoch is recorded; the next one is training
    assert child.kill() == -signal.SIGKILL

    store = RunStore(home)
    (killed,) = [r for r in store.list() if r.id != earlier]
    assert killed.method == "finetune" and killed.status == "interrupted"
    assert len(killed.curve) >= 1  # the finished epoch is kept
    assert not (killed.dir / "model.safetensors").exists()
    with pytest.raises(ToptuneError, match="interrupted"):
        from toptune_core.predict import Predictor
        Predictor.from_run(killed.id, store=store)
    before.assert_intact()

    from toptune_core.finetune import run_finetuning

    rerun = run_finetuning(data, store=RunStore(home), epochs=0, head_epochs=1, batch_size=6, budget_seconds=None)
    assert rerun.status == "completed" and (rerun.dir / "model.safetensors").exists()
    assert RunStore(home).get(killed.id).status == "interrupted"
    before.assert_intact()


_DOWNLOAD = r"""
import sys
from toptune_core.data.eden import download_eden_dataset
download_eden_dataset(sys.argv[1], sys.argv[2], base_url=sys.argv[3],
                      progress=lambda done, total, rate: print(f"got {done} of {total}", flush=True))
print("done", flush=True)
"""


def test_kill_during_download_then_resume(tmp_path: Path) -> None:
    from tests.eden_server import EdenServer, serve, url_path, zip_bytes
    from toptune_core.data.eden import download_eden_dataset

    name = "Black nightsade-220519-Weed-zz-V1-20210225102034"
    photos = {f"{name}/DSC_{i:04d}.JPG": p.read_bytes() for i, p in enumerate(sorted(DEMO_DATASET.rglob("*.jpg"))[:60])}
    data = zip_bytes(photos)
    total = len(data)
    cache = tmp_path / "eden_cache"
    with serve(EdenServer(rate=1.6e6)) as server:  # slowly: 1.6 MB/s
        server.serve_zip(name, data)
        child = Child([sys.executable, "-c", _DOWNLOAD, name, str(cache), server.base_url],
                      {**os.environ, "PYTHONPATH": str(REPO)})
        m = child.wait_for(r"got (\d{6,}) of", stream="out")  # at least 100 kB in
        assert child.kill() == -signal.SIGKILL
        assert int(m.group(1)) < total
        part = cache / "downloads" / f"{name}.zip.part"
        assert 0 < part.stat().st_size < total
        assert not (cache / "downloads" / f"{name}.zip").exists()  # a partial download is never taken for a zip
        assert not (cache / "eden" / name).exists()
        assert [p.name for p in (cache / "eden").iterdir()] == [] if (cache / "eden").exists() else True
        kept = part.stat().st_size

        folder = download_eden_dataset(name, cache, base_url=server.base_url)
        assert server.requests[-1] == (url_path(name), f"bytes={kept}-")  # resumed where the killed process stopped
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert got == {k.split("/", 1)[1]: v for k, v in photos.items()}
    assert not part.exists()


# --- two sessions, one cache entry ----------------------------------------------------------------------

def test_two_processes_extracting_the_same_dataset_make_one_entry(toptune_home: Path, tmp_path: Path) -> None:
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 8)
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    children = [cli_child(["toptune", "--data", str(data), "--json", str(o)], toptune_home) for o in outs]
    for c in children:
        assert c.wait() == 0, c.text()
    a, b = (json.loads(o.read_text()) for o in outs)
    assert sorted([a["cache_hit"], b["cache_hit"]]) == [False, True]  # one extracted, the other waited and reused
    entries = Snapshot(toptune_home).entries
    assert len(entries) == 2  # the run's features and the near-duplicate check's (lite0, one view, 224 px), once each
    assert_cache_has_no_half_entry(toptune_home)
    assert a["accuracy"] == b["accuracy"] and a["n_test"] == b["n_test"]
    assert [r.status for r in RunStore(toptune_home).list()] == ["completed", "completed"]


# --- a full disk ------------------------------------------------------------------------------------------

def _limit_file_size(max_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def test_disk_full_during_a_run_is_one_line_and_keeps_earlier_runs(home_with_earlier_run, tmp_path: Path) -> None:
    """The run's feature cache file cannot be written (the process may write no file over 150 kB)."""
    home, earlier = home_with_earlier_run
    before = Snapshot(home)
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 20)  # 60 photos: a 300 kB feature file
    result = run_cli(["toptune", "--data", str(data)], home, preexec_fn=_limit_file_size(150_000))
    assert result.returncode == 2
    assert_one_line_error(result, "Could not write the feature cache", "free some disk space")
    integrity_ok(home)
    assert_cache_has_no_half_entry(home)
    assert not list((home / "features").glob(".tmp-*"))
    (failed,) = [r for r in RunStore(home).list() if r.id != earlier]
    assert failed.status == "failed" and "feature cache" in failed.error
    before.assert_intact()


_FILL_STORE = r"""
import sys
from toptune_core.errors import ToptuneError
from toptune_core.runs.store import RunStore
store = RunStore(sys.argv[1])
i = 0
try:
    while True:
        run = store.start(method="toptune", backbone="tf_efficientnet_lite0", dataset="beans", classifier="rf",
                          params={"i": i, "note": "x" * 20000})
        store.save_model(run.id, {"i": i, "payload": bytes(30000)})
        store.complete(run.id, metrics={"accuracy": i / 1000}, timings={}, split={})
        print("completed", run.id, i, flush=True)
        i += 1
except ToptuneError as e:
    print("refused", e, flush=True)
"""


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(where)], check=True)
    return ok


@pytest.mark.parametrize("how", ["file_size_limit", "full_tmpfs"])
def test_run_store_on_a_full_disk_refuses_writes_and_keeps_every_committed_run(how: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    preexec = None
    mounted = False
    if how == "full_tmpfs":
        if os.geteuid() != 0 or not _can_mount_tmpfs(tmp_path / "probe"):
            pytest.skip("mounting a small tmpfs needs root with mount rights; the file-size-limit case covers it")
        home.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], check=True)
        mounted = True
    else:
        preexec = _limit_file_size(400_000)
    try:
        proc = subprocess.run([sys.executable, "-c", _FILL_STORE, str(home)], capture_output=True, text=True,
                              timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=preexec)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[-1].startswith("refused ") and "check free disk space" in lines[-1], lines[-1]
        committed = [line.split() for line in lines if line.startswith("completed ")]
        assert len(committed) >= 3, proc.stdout
        integrity_ok(home)
        store = RunStore(home)  # still full on tmpfs: the store opens and reads
        for _, run_id, i in committed:
            run = store.get(run_id)
            assert run.status == "completed" and run.params["i"] == int(i) and run.accuracy == int(i) / 1000
            assert store.load_model(run_id)["i"] == int(i)
        assert not list(home.rglob("*.tmp")), "a refused write left a temporary file"
        if mounted:  # the user frees some space: the run cut short by the full disk is then shown interrupted
            subprocess.run(["mount", "-o", "remount,size=8m", str(home)], check=True)
        statuses = [r.status for r in RunStore(home).list()]
        assert statuses.count("completed") == len(committed) and set(statuses) <= {"completed", "interrupted"}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(home)], check=False)


# --- a data folder that cannot be written ---------------------------------------------------------------

def _drop_root_write_override() -> None:
    """In the child: give up CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so that root obeys file permissions too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        os.chmod(p, (mode | 0o200) if writable else (mode & ~0o222))


def test_read_only_data_folder_is_one_line_and_changes_nothing(home_with_earlier_run, tmp_path: Path) -> None:
    home, earlier = home_with_earlier_run
    before = Snapshot(home)
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 4)
    preexec = None
    if os.geteuid() == 0:
        probe = subprocess.run(["true"], preexec_fn=_drop_root_write_override, capture_output=True)
        if probe.returncode != 0:
            pytest.skip("running as root without the right to drop CAP_DAC_OVERRIDE: a read-only folder cannot be "
                        "made here (the 'data folder under a file' case still runs)")
        preexec = _drop_root_write_override
    photo = sorted((data / "healthy").iterdir())[0]
    _set_writable(home, False)
    try:
        for args in (["toptune", "--data", str(data)], ["runs"], ["predict", "--run", earlier, str(photo)]):
            result = run_cli(args, home, preexec_fn=preexec)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert_one_line_error(result, str(home))
    finally:
        _set_writable(home, True)
    integrity_ok(home)
    assert [r.id for r in RunStore(home).list()] == [earlier]
    before.assert_intact()


def test_data_folder_under_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 2)
    result = run_cli(["toptune", "--data", str(data)], tmp_path / "a_file" / "toptune_home")
    assert result.returncode == 2
    assert_one_line_error(result, "Cannot create the data folder", "TOPTUNE_HOME")


# --- crashes in the middle of run-store writes ---------------------------------------------------------

_WRITER = r"""
import sys
import numpy as np
import pandas as pd
from toptune_core.runs.store import RunStore
store = RunStore(sys.argv[1])
weights = np.random.default_rng(0).normal(size=(500, 1000))  # a 4 MB model: its write takes a while
preds = pd.DataFrame({"path": [f"leaf {j}.jpg" for j in range(500)], "true": ["healthy"] * 500,
                      "predicted": ["bean_rust"] * 500, "confidence": [0.5] * 500, "correct": [False] * 500})
i = int(sys.argv[2])
while True:
    run = store.start(method="toptune", backbone="tf_efficientnet_lite0", dataset="beans", classifier="rf",
                      params={"i": i})
    store.update(run.id, split={"n_test": 500, "note": "y" * 10000})
    store.save_model(run.id, {"i": i, "weights": weights})
    store.complete(run.id, metrics={"accuracy": i / 1000}, timings={"fit_seconds": 1.0}, split={"n_test": 500},
                   predictions=preds)
    print("completed", run.id, i, flush=True)
    i += 1
"""


def test_run_store_survives_kills_in_the_middle_of_writes(tmp_path: Path) -> None:
    """Five writers killed at random moments (one run = 5 transactions and 2 file writes of 4 MB + 30 kB)."""
    import numpy as np

    home = tmp_path / "home"
    rng = random.Random(1234)
    committed: dict[str, int] = {}
    kills = 0
    for round_no in range(5):
        child = Child([sys.executable, "-c", _WRITER, str(home), str(1000 * round_no)],
                      {**os.environ, "PYTHONPATH": str(REPO)})
        child.wait_for(r"completed \S+ \d+\n(.*\n){%d}" % rng.randint(0, 2), stream="out", timeout=120)
        time.sleep(rng.uniform(0, 0.15))
        assert child.kill() == -signal.SIGKILL
        kills += 1
        for line in child.out.decode().split("\n")[:-1]:  # whole lines only
            _, run_id, i = line.split()
            committed[run_id] = int(i)
        integrity_ok(home)
        store = RunStore(home)
        runs = {r.id: r for r in store.list()}
        assert "running" not in {r.status for r in runs.values()}
        for run_id, i in committed.items():  # every run reported complete is complete, with its files
            run = runs[run_id]
            assert run.status == "completed" and run.accuracy == i / 1000 and run.split == {"n_test": 500}
            assert len(run.predictions()) == 500
            model = store.load_model(run_id)  # the SHA-256 recorded at save time matches
            assert model["i"] == i and np.array_equal(model["weights"][0, :3],
                                                      np.random.default_rng(0).normal(size=(500, 1000))[0, :3])
        for run in runs.values():  # the run being written when killed: interrupted, or complete if it got there
            if run.id not in committed:
                assert run.status == "interrupted" or store.load_model(run.id)["i"] >= 0
    assert kills == 5 and len(committed) >= 5


def test_a_damaged_run_store_is_one_line_and_left_as_it_is(toptune_home: Path) -> None:
    """A store file overwritten from outside (a bad copy, a disk error) is reported, never "repaired" away."""
    toptune_home.mkdir(parents=True, exist_ok=True)
    db = toptune_home / "runs.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    before = db.read_bytes()
    with pytest.raises(ToptuneError, match="is damaged") as info:
        RunStore(toptune_home)
    assert "\n" not in str(info.value)
    result = run_cli(["runs"], toptune_home)
    assert result.returncode == 2
    assert_one_line_error(result, "is damaged", "Move that file aside")
    assert db.read_bytes() == before
