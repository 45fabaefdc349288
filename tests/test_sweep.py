"""The sweep (every backbone x classifier, one recorded run each) and the Pareto front that Compare marks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from toptune_core.errors import ToptuneError
from toptune_core.reports import pareto_front, runs_frame
from toptune_core.runs.store import RunStore
from toptune_core.sweep import run_sweep

BACKBONES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
CLASSIFIERS = ["kernel", "logreg", "rf"]


def test_cli_sweep_on_the_demo_dataset_records_every_combination_once(demo_dataset, subprocess_env, tmp_path,
                                                                      toptune_home):
    out = tmp_path / "sweep.json"
    # One view of each photo (TOPTUNE_VIEWS, the settings' default view set): what is tested is the sweep's
    # bookkeeping, not the views (tests/test_views.py), and 8 views of 300 photos with two backbones took 45 s.
    result = subprocess.run([sys.executable, "-m", "toptune_core", "sweep", "--data", str(demo_dataset),
                             "--backbones", ",".join(BACKBONES), "--classifiers", ",".join(CLASSIFIERS),
                             "--json", str(out)], capture_output=True, text=True,
                            env={**subprocess_env, "TOPTUNE_VIEWS": "1"}, timeout=900)
    assert result.returncode == 0, result.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [(r["backbone"], r["classifier"]) for r in runs] == [(b, c) for b in BACKBONES for c in CLASSIFIERS]
    stored = RunStore(toptune_home).list(status="completed")
    assert sorted(r.id for r in stored) == sorted(r["run_id"] for r in runs)  # one recorded run per combination
    # Each backbone's features were extracted once, by its first run; the others read them from the cache.
    assert [r["cache_hit"] for r in runs] == [False, True, True] * len(BACKBONES)
    entries = [p for p in (toptune_home / "features").iterdir() if not p.name.startswith(".")]
    # one entry per backbone, and the near-duplicate check's (lite0 at its own 224 px, one view: the rule's
    # threshold was measured there; top-tuning's default for lite0 is 288 px)
    assert len(entries) == len(BACKBONES) + 1
    assert all(r["n_test"] == 67 and r["accuracy"] > 0.6 for r in runs)  # the stable split's, seed 0
    # One progress bar: every event was drawn as the sweep's.
    bars = [seg for seg in result.stderr.replace("\n", "\r").split("\r") if seg.startswith("[")]
    assert bars and all("] sweep: " in seg for seg in bars) and any("sweep: 6/6 runs" in seg for seg in bars)
    assert any("tf_efficientnet_lite1 + " in seg and "extract:" in seg for seg in bars)  # inner stages shown in it
    table = [line for line in result.stdout.splitlines() if line.startswith("| tf_")]
    assert len(table) == 6 and any(" * " in line for line in table)  # the best trade-offs are marked


def test_sweep_refuses_unknown_choices_before_running(small_dataset):
    with pytest.raises(ToptuneError, match="Unknown classifier"):
        run_sweep(small_dataset, backbones=["tf_efficientnet_lite0"], classifiers=["svm"])
    with pytest.raises(ToptuneError, match="does not exist"):
        run_sweep(small_dataset.parent / "nope", backbones=["tf_efficientnet_lite0"], classifiers=["kernel"])
    assert RunStore().list() == []


def test_pareto_front_marks_runs_nothing_beats_on_both():
    accuracy = [0.90, 0.92, 0.85, 0.92, None, 0.95]
    seconds = [1.0, 5.0, 0.5, 6.0, 0.1, 400.0]
    # 0.85 in 0.5 s and 0.90 in 1 s are cheap; 0.92 in 5 s beats 0.92 in 6 s; 0.95 is the most accurate.
    assert pareto_front(accuracy, seconds) == [True, True, True, False, False, True]
    assert pareto_front([0.9, 0.9], [2.0, 2.0]) == [True, True]  # equal runs do not beat each other


def test_runs_frame_marks_the_front_with_and_without_extraction(small_dataset, lite0_extractor):
    result = run_sweep(small_dataset, backbones=["tf_efficientnet_lite0"], classifiers=["kernel", "logreg"],
                       extractor_for=lambda b: lite0_extractor)
    assert len(result.runs) == 2 and not result.failures
    for include in (True, False):
        frame = runs_frame(result.runs, include_extraction=include)
        assert frame["best trade-off"].any()
        best = frame[frame["best trade-off"]]
        assert frame["accuracy"].max() in set(best["accuracy"])  # the most accurate run is always on the front
