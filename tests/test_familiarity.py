"""Photos the model never learned get "not recognised": the familiarity check, on real photos and weights.

Non-leaf photos are the sample photos bundled with scikit-image and
scikit-learn (an astronaut, a coffee cup, a cat, a rocket, a Chinese temple,
a flower...). The check is calibrated on training photos only, which a test
shows by changing the held-out photos.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_subset, seed_cache
from toptune_core.config import DEMO_DATASET
from toptune_core.experiment import run_toptuning
from toptune_core.features.cache import FeatureCache
from toptune_core.predict import Predictor
from toptune_core.runs.store import RunStore
from toptune_core.trust.familiarity import FamiliarityCheck
from toptune_core.trust.unseen import unseen_class_report


def non_leaf_photos() -> dict[str, bytes]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket",
                                                                 "camera", "hubble_deep_field")}
    arrays.update(zip(("china", "flower"), load_sample_images().images))
    out = {}
    for name, a in arrays.items():
        im = Image.fromarray(a if a.ndim == 3 else np.stack([a] * 3, axis=-1)).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("familiarity_home")


@pytest.fixture(scope="module")
def demo_run(home, lite0_extractor, demo_lite0_cache):
    store, cache = RunStore(home), FeatureCache(seed_cache(demo_lite0_cache, home / "features"))
    return run_toptuning(DEMO_DATASET, classifier="logreg", store=store, cache=cache, extractor=lite0_extractor), store


def test_a_run_refuses_photos_that_are_not_bean_leaves(demo_run, lite0_extractor):
    run, store = demo_run
    predictor = Predictor.from_run(run.id, store=store, extractor=lite0_extractor)
    for name, data in non_leaf_photos().items():
        p = predictor.predict(io.BytesIO(data))
        assert not p.recognised, (name, p.familiarity)
        entry = p.as_dict(name)
        assert entry["label"] is None and entry["unknown"] is True
        assert [c for c, _ in entry["top"]] and len(entry["top"]) == 3  # every class, also when unknown
        assert p.label in predictor.classes  # the classifier alone would have named a class
    # A training-set-like photo is recognised, with its nearest training photos as evidence.
    leaf = sorted((DEMO_DATASET / "bean_rust").glob("*.jpg"))[0]
    p = predictor.predict(str(leaf))
    assert p.recognised and p.label == "bean_rust"
    assert len(p.familiarity.nearest) == 5 and all(Path(path).exists() for path, _, _ in p.familiarity.nearest)
    assert p.familiarity.nearest[0][1] == "bean_rust"


def test_held_out_coverage_and_accuracy_on_recognised_photos(demo_run):
    run, _ = demo_run
    report = run.metrics["familiarity"]
    assert report["coverage"] >= 0.90
    assert report["accuracy_all"] == pytest.approx(run.metrics["accuracy"])
    # With the 8-view default the refused held-out photos are not mostly wrong any more (measured: 0.931 on the
    # recognised photos, 0.933 on all): the check may cost at most one recognised photo's worth of accuracy.
    n_recognised = report["coverage"] * run.split["n_test"]
    assert report["accuracy_recognised"] >= report["accuracy_all"] - 1 / n_recognised
    stricter = [report["by_strictness"][s]["coverage"] for s in ("strict", "normal", "lenient")]
    assert stricter == sorted(stricter)  # strict refuses at least as many as normal, normal as lenient
    frame = run.predictions()
    assert frame["recognised"].mean() == pytest.approx(report["coverage"])
    described = run.params["familiarity"]
    assert described["k"] == 10 and "training photos" in described["calibration"]


def test_the_threshold_never_depends_on_the_held_out_photos(tmp_path, lite0_extractor):
    train = copy_subset(DEMO_DATASET, tmp_path / "train", 60)
    test_a, test_b = tmp_path / "test_a", tmp_path / "test_b"
    for cls in ("angular_leaf_spot", "bean_rust", "healthy"):
        photos = sorted((DEMO_DATASET / cls).glob("*.jpg"))[60:]
        for dest, chosen in ((test_a, photos[:20]), (test_b, photos[20:])):
            (dest / cls).mkdir(parents=True)
            for p in chosen:
                os.symlink(p, dest / cls / p.name)
    store, cache = RunStore(tmp_path / "home"), FeatureCache(tmp_path / "home" / "features")
    runs = [run_toptuning(train, test_data=t, store=store, cache=cache, extractor=lite0_extractor)
            for t in (test_a, test_b)]
    a, b = (r.params["familiarity"] for r in runs)
    assert runs[0].split["test_files"] != runs[1].split["test_files"]
    assert a["thresholds"] == b["thresholds"]
    checks = [FamiliarityCheck.load(store.model_file(r.id, "familiarity.npz")) for r in runs]
    np.testing.assert_array_equal(checks[0].calibration_, checks[1].calibration_)
    # Not vacuous: other training photos give another threshold.
    other = run_toptuning(copy_subset(DEMO_DATASET, tmp_path / "train2", 40), test_data=test_a, store=store,
                          cache=cache, extractor=lite0_extractor)
    assert other.params["familiarity"]["thresholds"] != a["thresholds"]


def test_several_photos_of_one_plant_give_one_combined_diagnosis(demo_run, lite0_extractor):
    run, store = demo_run
    predictor = Predictor.from_run(run.id, store=store, extractor=lite0_extractor)
    held_out = run.predictions()
    rust = held_out[(held_out["true"] == "bean_rust") & held_out["recognised"]]["path"].tolist()[:3]
    photos = [str(p) for p in rust] + [io.BytesIO(non_leaf_photos()["coffee"]), io.BytesIO(b"not a photo")]
    diagnosis = predictor.diagnose(photos)
    assert diagnosis.label == "bean_rust" and diagnosis.n_recognised == 3
    assert [p.recognised for p in diagnosis.predictions[:4]] == [True, True, True, False]
    assert diagnosis.predictions[4] is None and diagnosis.errors[0][0] == 4
    expected = np.mean([p.probabilities for p in diagnosis.predictions[:3]], axis=0)
    np.testing.assert_allclose(diagnosis.probabilities, expected)


def test_a_class_left_out_is_refused_more_often_than_learned_photos(lite0_extractor, tmp_path):
    rows = unseen_class_report(DEMO_DATASET, extractor=lite0_extractor, cache=FeatureCache(tmp_path / "f"))
    assert [r["left_out"] for r in rows] == ["angular_leaf_spot", "bean_rust", "healthy"]
    refused = np.mean([r["refused_unseen"] for r in rows])
    missed = np.mean([1 - r["coverage_learned"] for r in rows])
    assert refused > missed  # the check does catch part of an unseen disease, but far from all of it
    assert all(r["refused_unseen"] < 0.5 for r in rows)  # the honest limit the README states


def test_predict_command_takes_files_and_folders_and_writes_json(demo_run, home, tmp_path):
    import json
    import subprocess
    import sys

    run, _ = demo_run
    folder = tmp_path / "field" / "nested"
    folder.mkdir(parents=True)
    leaves = sorted((DEMO_DATASET / "healthy").glob("*.jpg"))[:2]
    for leaf in leaves:
        (folder / leaf.name).write_bytes(leaf.read_bytes())
    (folder / "cup.jpg").write_bytes(non_leaf_photos()["coffee"])
    (folder / "broken.jpg").write_bytes(b"not a photo at all")
    (folder / "notes.txt").write_text("not a photo, not looked at")
    out = tmp_path / "out.json"
    env = {**os.environ, "TOPTUNE_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "toptune_core", "predict", "--run", run.id, str(tmp_path / "field"),
                             "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
    report = json.loads(out.read_text())
    assert report["run_id"] == run.id
    by_name = {Path(e["path"]).name: e for e in report["predictions"]}
    assert set(by_name) == {leaves[0].name, leaves[1].name, "cup.jpg", "broken.jpg"}
    assert "error" in by_name["broken.jpg"] and "NOT RECOGNISED" in result.stdout
    cup = by_name["cup.jpg"]
    assert cup["label"] is None and cup["unknown"] is True and 0 <= cup["familiarity"] < 0.05
    for leaf in leaves:
        e = by_name[leaf.name]
        assert e["unknown"] is False and e["label"] == e["top"][0][0]
        probs = [p for _, p in e["top"]]
        assert len(e["top"]) == 3 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-6
        assert len(e["nearest"]) == 5 and all(len(n) == 3 for n in e["nearest"])
