"""A live demo starts warm: ``make serve`` reads the demo photos as it starts, and the first top-tune is a cache
hit. Real lite0 weights, real leaf photos (a 12-photo copy of the demo set stands in for the demo folder)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, copy_subset
from toptune_core.config import DEMO_DATASET, Settings
from toptune_core.experiment import run_toptuning
from toptune_core.warmup import warm_up_status


def test_make_serve_warms_the_demo_as_it_starts():
    serve = subprocess.run(["make", "-n", "serve"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    warm, start = [line for line in serve.splitlines() if "warm-demo" in line or "streamlit run" in line]
    assert warm.rstrip().endswith("&") and "TOPTUNE_SHARED=1" in warm  # in the background, before the server
    assert "streamlit run app.py" in start


def test_warm_demo_fills_the_cache_so_the_first_run_is_one_cached_stage(tmp_path, subprocess_env, toptune_home):
    folder = copy_subset(DEMO_DATASET, tmp_path / "demo", 4)
    assert warm_up_status(Settings.from_env()) is None
    done = subprocess.run([sys.executable, "-m", "toptune_core", "warm-demo", "--data", str(folder)],
                          env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    state = warm_up_status(Settings.from_env())
    assert state["state"] == "ready" and state["photos"] == 12
    run = run_toptuning(folder)  # the defaults, as the dashboard's first click
    assert run.timings["cache_hit"] and [s["status"] for s in run.metrics["stages"]] == ["final"]
    assert run.params["n_views"] == 8


def test_a_warm_up_whose_process_is_gone_reads_as_stopped(toptune_home):
    toptune_home.mkdir(parents=True, exist_ok=True)
    (toptune_home / "warm-up.json").write_text(json.dumps({"state": "running", "pid": 2 ** 22 + 12345}))
    assert warm_up_status(Settings.from_env())["state"] == "stopped"


def test_the_home_page_says_while_the_server_is_warming_up(toptune_home):
    import os

    from streamlit.testing.v1 import AppTest

    toptune_home.mkdir(parents=True, exist_ok=True)
    status = toptune_home / "warm-up.json"
    status.write_text(json.dumps({"state": "running", "pid": os.getpid(), "done": 40, "total": 300}))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert any("Warming up" in box.value and "40 of 300 photos" in box.value for box in at.info)
    status.write_text(json.dumps({"state": "ready", "pid": os.getpid(), "done": 300, "total": 300}))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not any("Warming up" in box.value for box in at.info)
    assert any("demo photos are read and cached" in c.value for c in at.caption)
