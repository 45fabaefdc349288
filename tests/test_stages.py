"""Progressive top-tuning: a first model on one view, then the final model on every view, one cache entry.

Real lite0 weights and real leaf photos (60 demo photos: enough for a first stage, ``MIN_PHOTOS_TO_STAGE``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from toptune_core.data.dataset import load_dataset
from toptune_core.errors import Cancelled
from toptune_core.experiment import run_toptuning, summary
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.estimate import MIN_PHOTOS_TO_STAGE, estimate_extraction
from toptune_core.runs.store import RunStore


@pytest.fixture(scope="module")
def extractor(lite0_extractor):
    """The default features (8 views at 288 px) sharing the session's loaded lite0 model."""
    return lite0_extractor.reconfigured(views="dihedral", resolution=288)


def _probabilities(store: RunStore, run) -> np.ndarray:
    frame = pd.read_csv(store.run_dir(run.id) / "predictions.csv")
    return frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()


def test_a_first_run_fits_a_first_model_then_the_same_final_model_as_one_extraction(small_dataset, extractor,
                                                                                    tmp_path):
    assert len(load_dataset(small_dataset)) >= MIN_PHOTOS_TO_STAGE
    staged_store, staged_cache = RunStore(tmp_path / "staged"), FeatureCache(tmp_path / "staged" / "features")
    seen = []
    staged = run_toptuning(small_dataset, store=staged_store, cache=staged_cache, extractor=extractor,
                           views="dihedral", resolution=288,
                           on_stage=lambda run: seen.append((run.metrics["stages"], run.split["near_duplicates"])))
    stages = staged.metrics["stages"]
    assert [s["status"] for s in stages] == ["first", "final"] and [s["n_views"] for s in stages] == [1, 8]
    assert stages[0]["seconds"] < stages[1]["seconds"]
    assert [len(s) for s, _ in seen] == [1, 2]  # the first model was recorded (and usable) before the final one
    # The near-duplicate reference (a second extraction) came after the first model: the random split and the
    # logistic regression need no groups; the final model's record has the report.
    assert seen[0][1] is None and seen[1][1]["n_test"] == len(staged.split["test_files"])
    assert stages[1]["accuracy"] == staged.accuracy and staged.params["n_views"] == 8
    out = summary(staged)
    assert out["stages"][-1]["accuracy"] == out["accuracy"] and out["views"] == "dihedral"
    entries = [p for p in staged_cache.root.iterdir() if not p.name.startswith(".")]
    meta = json.loads((staged_cache.path(staged_cache.key(load_dataset(small_dataset).fingerprint(),
                                                          extractor.cache_identity)) / "meta.json").read_text())
    assert meta["n_views"] == 8 and [views for views, _ in meta["stage_seconds"]] == [1, 8]
    assert len(entries) == 2  # the 288-px entry (both stages) and the 224-px near-duplicate reference

    # the same run on features extracted in one go (all 8 views of each photo at once): one stage, same model
    one_store, one_cache = RunStore(tmp_path / "one"), FeatureCache(tmp_path / "one" / "features")
    get_features(load_dataset(small_dataset), extractor, one_cache)
    one = run_toptuning(small_dataset, store=one_store, cache=one_cache, extractor=extractor, views="dihedral",
                        resolution=288)
    assert [s["status"] for s in one.metrics["stages"]] == ["final"]
    assert one.split["test_files"] == staged.split["test_files"]
    assert one.split["near_duplicates"]["pairs_across"] == staged.split["near_duplicates"]["pairs_across"]
    assert np.abs(_probabilities(one_store, one) - _probabilities(staged_store, staged)).max() <= 1e-5


def test_cancel_after_the_first_stage_keeps_its_model_and_views_and_the_next_run_adds_only_the_rest(
        small_dataset, extractor, tmp_path, subprocess_env, toptune_home):
    from toptune_core.predict import Predictor

    store, cache = RunStore(toptune_home), FeatureCache(toptune_home / "features")
    ds = load_dataset(small_dataset)
    key = cache.key(ds.fingerprint(), extractor.cache_identity)
    first_done = []
    run = run_toptuning(small_dataset, store=store, cache=cache, extractor=extractor, views="dihedral",
                        resolution=288, on_stage=first_done.append, should_cancel=lambda: bool(first_done))
    assert run.status == "completed"
    assert [s["status"] for s in run.metrics["stages"]] == ["first", "cancelled"]
    assert run.params["n_views"] == 1 and run.accuracy == run.metrics["stages"][0]["accuracy"]
    assert cache.views_in(key) == 1  # the first stage's views are kept
    predictions = pd.read_csv(store.run_dir(run.id) / "predictions.csv")
    photo = predictions["path"].iloc[0]
    kept = Predictor.from_run(run.id, store, extractor=extractor).predict(photo)  # the first model, usable
    assert kept.label == predictions["predicted"].iloc[0]
    p_columns = [c for c in predictions.columns if c.startswith("p_")]
    assert np.abs(kept.probabilities - predictions[p_columns].iloc[0].to_numpy()).max() <= 1e-5
    estimate = estimate_extraction(ds, extractor, cache)
    assert not estimate.staged and estimate.photos_to_extract == len(ds)

    # the next run, a new process: the final model at once, extracting the 7 missing views only
    out = tmp_path / "next.json"
    done = subprocess.run([sys.executable, "-m", "toptune_core", "toptune", "--data", str(small_dataset),
                           "--json", str(out)], env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [s["status"] for s in result["stages"]] == ["final"] and result["stages"][0]["n_views"] == 8
    assert result["stages"][0]["accuracy"] == result["accuracy"]
    meta = json.loads((cache.path(key) / "meta.json").read_text())
    assert meta["n_views"] == 8 and [views for views, _ in meta["stage_seconds"]] == [1, 8]
    assert meta["n_extended"] == len(ds)  # 7 views of each photo added to the kept first views


def test_the_reference_comes_before_the_first_model_only_where_the_run_needs_it(small_dataset, extractor,
                                                                               tmp_path):
    """A grouped split is cut from the session groups and the kernel's and the automatic choice's fits read them:
    there the reference comes first, and the page's estimate of the first model counts it."""
    from toptune_core.leakage import reference_comes_first
    from toptune_core.methods.toptuner import TopTuner

    assert not reference_comes_first("random", TopTuner(classifier="logreg"))
    assert not reference_comes_first("random", TopTuner(classifier="rf"))
    assert reference_comes_first("grouped", TopTuner(classifier="logreg"))
    assert reference_comes_first("random", TopTuner(classifier="kernel"))
    assert reference_comes_first("random", TopTuner(classifier="auto"))
    ds, cache = load_dataset(small_dataset), FeatureCache(tmp_path / "features")
    first = estimate_extraction(ds, extractor, cache, reference_first=True)
    later = estimate_extraction(ds, extractor, cache, reference_first=False)
    assert first.staged and later.final_passes == first.final_passes
    size = (288 / 224) ** 2  # passes are counted at the backbone's own 224 px
    assert later.first_passes == pytest.approx(len(ds) * size)  # one view a photo, no reference
    assert first.first_passes == pytest.approx(len(ds) * (size + 1))  # and one 224-px reference pass a photo
