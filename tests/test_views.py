"""Views of a photo (flips and quarter turns) and the input resolution: cut from one decode, part of the cache's
identity, kept together by every training step, averaged by every prediction path (dashboard, command line,
exported bundle, Ray). Real backbone, real leaf photos, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.conftest import REPO
from toptune_core.config import DEMO_DATASET
from toptune_core.data.dataset import load_dataset
from toptune_core.errors import ToptuneError
from toptune_core.features import views
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.methods.auto import cv_folds
from toptune_core.methods.photos import Photos

BACKBONE = "tf_efficientnet_lite0"


def test_dihedral_views_are_the_eight_turns_and_mirrors_of_each_photo():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 6, 6, 3), dtype=np.uint8)
    cut = views.cut(pixels, "dihedral").reshape(3, 8, 6, 6, 3)
    for i in range(3):
        expected = [np.rot90(pixels[i], k) for k in range(4)]
        expected = [e for k in range(4) for e in (expected[k], expected[k][:, ::-1])]
        for v in range(8):
            assert np.array_equal(cut[i, v], expected[v])
        assert len({cut[i, v].tobytes() for v in range(8)}) == 8  # a random photo: eight different views
    assert np.array_equal(cut[:, 0], pixels)  # the first view is the photo as it is
    assert views.cut(pixels, "1") is pixels
    assert np.array_equal(views.cut(pixels, "flip").reshape(3, 2, 6, 6, 3)[:, 1], pixels[:, :, ::-1])
    with pytest.raises(ToptuneError, match="Unknown view set 'upside'"):
        views.cut(pixels, "upside")


def test_flatten_keeps_each_photos_views_in_one_group_and_average_undoes_it():
    F = np.arange(5 * 8 * 2, dtype=np.float32).reshape(5, 8, 2)
    X, y, groups = views.flatten(F, np.array([0, 1, 0, 1, 1]), groups=[-1, 7, 7, -1, 3])
    assert X.shape == (40, 2) and np.array_equal(X[8:16], F[1])
    assert np.array_equal(y, np.repeat([0, 1, 0, 1, 1], 8))
    per_photo = groups.reshape(5, 8)
    assert (per_photo == per_photo[:, :1]).all()  # every view of a photo shares its photo's group
    assert per_photo[1, 0] == per_photo[2, 0]  # near-duplicate photos share a group
    assert len({per_photo[0, 0], per_photo[3, 0], per_photo[1, 0], per_photo[4, 0]}) == 4  # -1: a group alone
    proba = np.repeat(np.eye(5)[:, :3] * 0 + np.array([0.2, 0.3, 0.5]), 8, axis=0)
    assert np.allclose(views.average(proba, 8), [0.2, 0.3, 0.5])


def test_cross_validation_folds_never_split_the_views_of_a_photo():
    rng = np.random.default_rng(1)
    y_photos = np.repeat([0, 1, 2], 12)
    _, y, groups = views.flatten(rng.normal(size=(36, 8, 4)), y_photos)
    photo_of_row = np.repeat(np.arange(36), 8)
    for train, test in cv_folds(y, groups, 5, seed=0):
        assert not set(photo_of_row[train]) & set(photo_of_row[test])


@pytest.fixture(scope="module")
def dihedral_features(tmp_path_factory):
    """The small set's features with the eight views (extracted once for the module)."""
    from tests.conftest import copy_subset

    data = copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("views") / "beans", 6)
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    extractor = FeatureExtractor(BACKBONE, views="dihedral")
    return data, extractor, cache, get_features(load_dataset(data), extractor, cache)


def test_views_come_from_one_decode_and_match_the_model_on_each_turned_photo(dihedral_features):
    data, extractor, cache, fs = dihedral_features
    ds = load_dataset(data)
    assert fs.entry.features.shape == (len(ds), 8, 1280) and fs.entry.meta["views"] == "dihedral"
    pixels = extractor.load_pixels(ds.paths[0])
    for v, (turns, mirror) in enumerate(views.VIEW_SETS["dihedral"]):
        turned = np.rot90(pixels, turns)
        turned = np.ascontiguousarray(turned[:, ::-1] if mirror else turned)
        assert np.abs(extractor.features_of_pixels(turned[None])[0] - fs.entry.features[0, v]).max() <= 1e-4
    one = get_features(ds, extractor.reconfigured(views="1"), cache)  # the first view of the same entry
    assert one.entry.features.shape == (len(ds), 1, 1280) and one.cache_hit
    assert np.array_equal(one.entry.features[:, 0], fs.entry.features[:, 0])  # view 0 is the photo
    alone = get_features(ds, extractor.reconfigured(views="1"), FeatureCache(cache.root.parent / "one-view"))
    assert np.abs(alone.entry.features[:, 0] - fs.entry.features[:, 0]).max() <= 1e-4


def test_cache_key_changes_with_resolution_and_every_view_set_shares_one_entry(dihedral_features):
    data, extractor, cache, _ = dihedral_features
    fingerprint = load_dataset(data).fingerprint()
    keys = {cache.key(fingerprint, extractor.reconfigured(views=v, resolution=r).cache_identity)
            for v in ("1", "flip", "dihedral") for r in (224, 256, 288)}
    assert len(keys) == 3  # one entry per input size; it holds the first k views of views.ORDER
    assert extractor.reconfigured(resolution=288).data_config["input_size"] == [3, 288, 288]
    assert extractor.reconfigured(views="flip").model_identity == extractor.model_identity  # one exported graph
    with pytest.raises(ToptuneError, match="between 64 and 1024"):
        FeatureExtractor(BACKBONE, resolution=20000)


def _cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "toptune_core", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_every_prediction_path_gives_the_same_probabilities(small_dataset, subprocess_env, tmp_path):
    """One run at 256 px with two views: the dashboard's Predictor, ``predict`` in a new process, the exported
    bundle's predict.py and features extracted on Ray agree within 1e-5."""
    import ray

    from toptune_core.experiment import run_toptuning
    from toptune_core.features.distributed import RayFeatureExtractor
    from toptune_core.predict import Predictor

    subprocess_env["CUDA_VISIBLE_DEVICES"] = ""
    run = run_toptuning(small_dataset, classifier="logreg", views="flip", resolution=256)
    assert run.params["views"] == "flip" and run.params["resolution"] == 256
    photos = [str(p) for p in sorted(DEMO_DATASET.glob("*/*.jpg"))[40::90]]
    predictor = Predictor.from_run(run.id)
    ours = [predictor.predict(p).probabilities for p in photos]

    out = tmp_path / "p.json"
    assert _cli(["predict", "--run", run.id, "--json", str(out), *photos], subprocess_env).returncode == 0
    command = [dict(p["top"]) for p in json.loads(out.read_text())["predictions"]]

    bundle = tmp_path / "m.zip"
    assert _cli(["export", "--run", run.id, str(bundle)], subprocess_env).returncode == 0
    with zipfile.ZipFile(bundle) as z:
        z.extractall(tmp_path / "unpacked")
        assert json.loads(z.read("model.json"))["preprocessing"]["input_size"] == 256
    result = subprocess.run([sys.executable, "-I", "predict.py", *photos], cwd=tmp_path / "unpacked",
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    exported = [dict(json.loads(line)["top"]) for line in result.stdout.splitlines()]

    # a runtime of its own ("local"): a bare ray.init() would join a cluster an earlier test left recorded
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        on_ray = RayFeatureExtractor(BACKBONE, views="flip", resolution=256).transform(photos)
    finally:
        ray.shutdown()
    assert on_ray.features.shape == (len(photos), 2, 1280)
    via_ray = predictor.estimator.predict_proba(Photos(photos, on_ray.features))

    classes = predictor.classes
    for i in range(len(photos)):
        for other in (command[i], exported[i]):
            assert max(abs(other[c] - ours[i][k]) for k, c in enumerate(classes)) <= 1e-5
        assert np.abs(via_ray[i] - ours[i]).max() <= 1e-5
