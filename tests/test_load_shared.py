"""Load on a shared-mode dashboard: 20 visitor sessions classify photos at once while two other visitors' feature
extractions run, all in one process, as on a Streamlit server (one process, one thread per script run).

Each visitor is an AppTest session with its own workspace (its own URL token), driven from its own thread; a
round is all 20 uploading one photo at the same moment (a barrier), three rounds. They classify with the
showcase run (top-tuned here on the demo dataset, added with the operator's `showcase` command); the two
extractions are top-tunes of two fresh copies of the demo dataset, chosen as server folders and started from the
Top-tune page, running as the dashboard's background jobs. Every answer must be the one the same model gives the
same photo alone; no session may show an error; memory is this process's resident set, sampled every 0.1 s.
Latency is one script run: the upload reaching the page script to the page drawn (no browser; the browser tests
drive real servers). `pytest -s tests/test_load_shared.py` prints the figures (also written to
test-artifacts/load-shared.txt).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from streamlit import config as st_config
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.testing.v1 import AppTest, app_test

from tests.conftest import REPO, seed_cache
from toptune_core.config import DEMO_DATASET
from toptune_core.runs.store import RunStore

VISITORS = int(os.environ.get("TOPTUNE_LOAD_VISITORS", 20))
ROUNDS = int(os.environ.get("TOPTUNE_LOAD_ROUNDS", 3))
APP = REPO / "app.py"
ARTIFACTS = REPO / "test-artifacts"
ANSWERS = {"angular_leaf_spot", "bean_rust", "healthy", "Not recognised"}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples, self.stop = [_rss_mb()], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append(_rss_mb())


@pytest.fixture
def shared_server(toptune_home, subprocess_env, lite0_extractor, demo_lite0_cache, tmp_path, monkeypatch):
    """Shared mode with a showcase run on the demo dataset and two uncached server folders; yields the run."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache

    cache = FeatureCache(seed_cache(demo_lite0_cache, toptune_home / "features"))  # the showcase's features
    run = run_toptuning(DEMO_DATASET, store=RunStore(toptune_home), cache=cache, extractor=lite0_extractor)
    added = subprocess.run([sys.executable, "-m", "toptune_core", "showcase", run.id], env=subprocess_env,
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    roots = tmp_path / "roots"
    for name in ("copy1", "copy2"):  # fresh copies (new times): other fingerprints, nothing cached
        shutil.copytree(DEMO_DATASET, roots / name, copy_function=shutil.copy)
    monkeypatch.setenv("TOPTUNE_SHARED", "1")
    monkeypatch.setenv("TOPTUNE_DATA_ROOTS", str(roots))
    # AppTest switches this option on and off around each run; held on, concurrent sessions do not undo it
    # for each other.
    st_config.set_option("global.appTest", True)
    # One compiled copy of the page scripts for all sessions, as on a server (AppTest compiles them again for
    # every run, and CPython 3.11's parser run in many threads at once can fail: "AST constructor recursion depth
    # mismatch").
    scripts = ScriptCache()
    monkeypatch.setattr(app_test, "ScriptCache", lambda: scripts)
    yield run
    st_config.set_option("global.appTest", False)


def _session(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    return at.switch_page(f"pages/{page}.py").run()


def _start_extraction(folder: Path) -> AppTest:
    at = _session("data")
    at.radio(key="data_source").set_value("Folder on this server").run()
    at.selectbox(key="server_folder").set_value(str(folder.resolve())).run()
    [b for b in at.button if b.label == "Use this folder"][0].click().run()
    at.switch_page("pages/toptune.py").run()
    at.radio(key="tt_views").set_value("1").run()  # one view of each photo: the background load of README's figures
    [b for b in at.button if b.label == "Top-tune"][0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _classify(at: AppTest, photo: Path) -> dict:
    t0 = time.perf_counter()
    try:
        at.file_uploader(key="cls_upload").set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    except Exception as e:  # the session could not be driven: a failure, counted like the others
        return {"photo": photo, "seconds": time.perf_counter() - t0, "answer": None,
                "errors": [f"{type(e).__name__}: {e}"]}
    seconds = time.perf_counter() - t0
    answers = [m.value[4:] for m in at.markdown if m.value.startswith("### ") and m.value[4:] in ANSWERS]
    return {"photo": photo, "seconds": seconds, "answer": answers[0] if len(answers) == 1 else None,
            "errors": [f"{e.value} {' '.join(e.stack_trace)}" for e in at.exception] + [e.value for e in at.error]}


def test_twenty_visitors_classify_while_two_extractions_run(shared_server):
    from toptune_core.jobs.thread import registry
    from toptune_core.predict import Predictor

    run = shared_server
    held_out = sorted(run.split["test_files"])
    photos = [Path(p) for p in held_out[:: max(1, len(held_out) // (VISITORS * ROUNDS + 1))]][:VISITORS * ROUNDS + 1]
    model = Predictor.from_run(run.id, store=RunStore(os.environ["TOPTUNE_HOME"] + "/showcase"))
    expected = {p: "Not recognised" if not (pred := model.predict(p)).recognised else pred.label for p in photos}

    visitors = [_session("classify") for _ in range(VISITORS)]
    assert len({at.query_params["v"] for at in visitors}) == VISITORS, "each visitor has their own workspace"
    warm = _classify(visitors[0], photos[-1])  # the model loads once, before the load
    memory = RssSampler()
    memory.start()
    roots = Path(os.environ["TOPTUNE_DATA_ROOTS"])
    extractions = [_start_extraction(roots / folder) for folder in ("copy1", "copy2")]
    jobs = [registry().get(at.session_state["job:toptune"]) for at in extractions]

    results: list[dict] = []
    running_per_round: list[int] = []
    barrier = threading.Barrier(VISITORS)
    lock = threading.Lock()

    def visitor(i: int) -> None:
        for r in range(ROUNDS):
            try:
                barrier.wait(timeout=300)
            except threading.BrokenBarrierError:
                pass  # a round took too long: go on, and let the figures show it
            outcome = _classify(visitors[i], photos[r * VISITORS + i])
            with lock:
                results.append(outcome)
            if i == 0:
                running_per_round.append(sum(job.view().active for job in jobs))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(VISITORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    load_seconds = time.perf_counter() - t0
    for job in jobs:
        assert job.wait(600), "an extraction did not finish"
    memory.stop.set()
    memory.join()

    latencies = sorted(r["seconds"] for r in results)
    failures = [r for r in results if r["errors"] or r["answer"] != expected[r["photo"]]]
    peak, before = max(memory.samples), memory.samples[0]
    extracted = [RunStore(Path(job.view().params["home"])).get(job.view().result) for job in jobs]
    report = "\n".join([
        f"shared-mode load: {VISITORS} visitor sessions x {ROUNDS} rounds (all at once each round), one photo per "
        f"request, while 2 extractions of 300 photos run in the same process (extractions running at the start "
        f"of each round's answers: {', '.join(map(str, running_per_round))})",
        f"requests {len(results)}, failures {len(failures)} (wrong answers "
        f"{sum(r['answer'] != expected[r['photo']] for r in results)}, sessions with an error "
        f"{sum(bool(r['errors']) for r in results)})",
        f"latency (one script run, upload to page drawn): median {statistics.median(latencies):.2f} s, "
        f"90th percentile {latencies[int(0.9 * (len(latencies) - 1))]:.2f} s, worst {latencies[-1]:.2f} s; "
        f"one request alone before the load {warm['seconds']:.2f} s; {load_seconds:.0f} s for all rounds",
        "extractions: " + ", ".join(f"{r.timings['feature_extraction_seconds']:.0f} s" for r in extracted)
        + " (300 photos each, during the load)",
        f"memory of the process: {before:.0f} MB before the load (model loaded), peak {peak:.0f} MB "
        f"(+{peak - before:.0f} MB), {memory.samples[-1]:.0f} MB at the end",
    ])
    print("\n" + report)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load-shared.txt").write_text(report + "\n")
    assert warm["answer"] == expected[photos[-1]] and not warm["errors"]
    assert len(results) == VISITORS * ROUNDS
    assert not failures, [(r["photo"].name, r["answer"], expected[r["photo"]], r["errors"]) for r in failures]
    assert all(r.status == "completed" and not r.timings["cache_hit"] for r in extracted)
    assert running_per_round[0] == 2, "the visitors classified while both extractions ran"
    assert peak - before < 1000, "memory stays bounded"
