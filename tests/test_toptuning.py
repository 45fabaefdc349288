"""Top-tuning end to end: feature cache, classifiers, evaluation, run records and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from toptune_core.data.dataset import load_dataset
from toptune_core.errors import Cancelled
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.predict import Predictor
from toptune_core.runs.store import RunStore
from toptune_core.experiment import run_toptuning

SUMMARY_KEYS = {"run_id", "backbone", "classifier", "n_train", "n_test", "accuracy", "balanced_accuracy", "macro_f1",
                "extract_seconds", "fit_seconds", "cache_hit"}


def test_cache_hit_skips_extraction(small_dataset, lite0_extractor):
    cache = FeatureCache()
    ds = load_dataset(small_dataset)
    first = get_features(ds, lite0_extractor, cache)
    assert not first.cache_hit and first.entry.features.shape == (60, 1, 1280) and first.entry.ok.all()
    # A fresh extractor that has never loaded its model: a hit must not load it.
    fresh = FeatureExtractor("tf_efficientnet_lite0", views="1", resolution=224)
    second = get_features(load_dataset(small_dataset), fresh, cache)
    assert second.cache_hit and fresh._model is None
    np.testing.assert_array_equal(second.entry.features, first.entry.features)
    assert second.entry.relpaths == ds.relpaths


def test_cache_invalidated_when_a_photo_changes(tmp_path, small_dataset, lite0_extractor):
    data = shutil.copytree(small_dataset, tmp_path / "beans")
    cache = FeatureCache()
    get_features(load_dataset(data), lite0_extractor, cache)
    photo = sorted((data / "healthy").glob("*.jpg"))[0]
    photo.write_bytes((small_dataset / "bean_rust" / sorted(p.name for p in (small_dataset / "bean_rust").glob("*.jpg"))[0]).read_bytes())
    again = get_features(load_dataset(data), lite0_extractor, cache)
    assert not again.cache_hit
    assert len([p for p in cache.root.iterdir() if not p.name.startswith(".")]) == 2


def test_interrupted_extraction_leaves_no_entry(small_dataset, lite0_extractor):
    cache = FeatureCache()
    ds = load_dataset(small_dataset)
    seen = []

    def cancel_after_first_batch():
        return len(seen) > 0

    with pytest.raises(Cancelled):
        get_features(ds, lite0_extractor, cache, progress=lambda p: p.done and seen.append(p.done),
                     should_cancel=cancel_after_first_batch)
    key = cache.key(ds.fingerprint(), lite0_extractor.cache_identity)
    assert cache.load(key) is None
    assert not any(p.name.startswith(key) for p in cache.root.iterdir())
    assert not list(cache.root.glob(".tmp-*"))  # the temporary folder was cleaned up too
    assert not get_features(ds, lite0_extractor, cache).cache_hit  # a rerun extracts cleanly


def test_unreadable_photos_are_skipped_and_named(tmp_path, small_dataset, lite0_extractor):
    data = shutil.copytree(small_dataset, tmp_path / "beans")
    (data / "healthy" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = (data / "bean_rust").glob("*.jpg").__next__()
    (data / "bean_rust" / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    run = run_toptuning(data, extractor=lite0_extractor, classifier="logreg")
    unreadable = {path: reason for path, reason in run.split["unreadable"]}
    assert set(unreadable) == {"healthy/broken.jpg", "bean_rust/truncated.jpg"}
    assert "not a readable image" in unreadable["healthy/broken.jpg"]
    assert run.split["n_train"] + run.split["n_test"] == 60


def test_toptuning_records_an_honest_run(small_dataset, lite0_extractor):
    store = RunStore()
    run = run_toptuning(small_dataset, extractor=lite0_extractor, seed=0)
    # The default top classifier is logistic regression: the estimate for new photos chose it (README, the grid).
    assert run.status == "completed" and run.method == "toptune" and run.classifier == "logreg"
    # Each photo's side is fixed by its content (data.split): the count held out is the rule's, about a quarter
    # (the old exact 15 of 60 came with photos moving across the split at every edit).
    from toptune_core.data.dataset import load_dataset
    from toptune_core.data.split import photo_keys, side_of

    expected = int((side_of(photo_keys(load_dataset(small_dataset)), 0) < 0.25).sum())
    assert run.split["method"].startswith("stratified random split") and run.split["n_test"] == expected
    test_files = set(run.split["test_files"])
    preds = run.predictions()
    assert set(preds["path"]) == test_files and len(preds) == expected  # scored on held-out photos only
    assert np.isclose(preds["correct"].mean(), run.metrics["accuracy"])
    assert np.array(run.metrics["confusion_matrix"]).sum() == expected
    assert run.metrics["accuracy"] >= 0.6  # about 45 training photos; chance is 0.33
    t = run.timings
    assert t["train_seconds_with_extraction"] > t["train_seconds_without_extraction"] == t["fit_seconds"]
    assert store.get(run.id).metrics == run.metrics  # persisted
    # The saved classifier classifies a real held-out photo as the run did.
    row = preds.iloc[0]
    prediction = Predictor.from_run(run.id, extractor=lite0_extractor).predict(row["path"])
    assert prediction.label == row["predicted"]
    assert np.isclose(prediction.confidence, row["confidence"], atol=1e-4)


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "toptune_core", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_toptune_demo_dataset_then_cache_hit_then_predict(demo_dataset, subprocess_env, tmp_path):
    """The acceptance path on the shipped demo data: accuracy floor, cache hit on the second call, predict."""
    out1, out2 = tmp_path / "first.json", tmp_path / "second.json"
    env = {**subprocess_env, "TOPTUNE_PRECISION": "auto"}  # the product's engine choice, as a new user runs it
    first = _cli(["toptune", "--data", str(demo_dataset), "--backbone", "tf_efficientnet_lite0", "--json", str(out1)],
                 env)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(out1.read_text())
    assert SUMMARY_KEYS <= set(r1)
    assert (r1["n_train"] + r1["n_test"], r1["n_test"], r1["cache_hit"]) == (300, 67, False)  # the stable split
    # The default (logistic regression, 8 views, 288 px) measured 0.881 (59 of 67) on this held-out share (seed 0,
    # the stable split, f32; 0.907, 68 of 75, on the older exact split); the floor leaves two photos of room for
    # floating-point differences between CPUs and engines (bf16 where the CPU has it).
    assert r1["classifier"] == "logreg" and r1["views"] == "dihedral" and r1["resolution"] == 288
    assert r1["accuracy"] >= 0.85
    second = _cli(["toptune", "--data", str(demo_dataset), "--json", str(out2)], env)
    assert second.returncode == 0, second.stderr
    r2 = json.loads(out2.read_text())
    assert r2["cache_hit"] is True and "features from cache" in second.stdout
    assert r2["accuracy"] == r1["accuracy"]  # same split, same seed, same features
    photo = sorted((demo_dataset / "bean_rust").glob("*.jpg"))[0]
    pred = _cli(["predict", "--run", r2["run_id"], str(photo)], env)
    assert pred.returncode == 0, pred.stderr
    assert pred.stdout.startswith(f"{photo}: ") and "bean_rust" in pred.stdout


@pytest.mark.parametrize("case", ["missing", "one_class", "no_images", "unreadable_photo", "unknown_run"])
def test_cli_bad_input_is_one_clear_line(case, tmp_path, small_dataset, subprocess_env):
    if case == "missing":
        args, expect = ["toptune", "--data", str(tmp_path / "nope")], "does not exist"
    elif case == "one_class":
        shutil.copytree(small_dataset / "healthy", tmp_path / "one" / "healthy")
        args, expect = ["toptune", "--data", str(tmp_path / "one")], "only one class"
    elif case == "no_images":
        for c in ("a", "b"):
            (tmp_path / "none" / c).mkdir(parents=True)
            (tmp_path / "none" / c / "notes.txt").write_text("x")
        args, expect = ["toptune", "--data", str(tmp_path / "none")], "No images found"
    elif case == "unreadable_photo":
        store = RunStore()
        run = store.start(method="toptune", backbone="tf_efficientnet_lite0", dataset="x")
        store.complete(run.id, metrics={}, timings={}, split={})
        bad = tmp_path / "leaf.jpg"
        bad.write_text("not a photo")
        from toptune_core.methods.classifiers import make_classifier
        clf = make_classifier("logreg").fit(np.random.default_rng(0).normal(size=(6, 1280)), [0, 1, 2] * 2)
        store.save_model(run.id, {"kind": "toptune", "classifier": clf, "classes": ["a", "b", "c"],
                                  "backbone": "tf_efficientnet_lite0"})
        args, expect = ["predict", "--run", run.id, str(bad)], "not a readable image"
    else:
        args, expect = ["predict", "--run", "no-such-run", "x.jpg"], "No run with id"
    result = _cli(args, subprocess_env)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and expect in lines[-1]
    assert "Traceback" not in result.stderr
