"""A disease it never learned: the honest protocol of ``unseen`` on real photos and real weights (small subsets).

The protocol's promises: out-of-fold calibration never scores a photo against
itself, the patch bank holds cells of training photos only, the maps pool to
exactly the features the extractor gives, and the command prints and writes
every score's figures per left-out class.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import copy_subset
from toptune_core.config import DEMO_DATASET
from toptune_core.data.split import load_data, stratified_split
from toptune_core.trust.patches import MapModel, PatchBank, feature_maps
from toptune_core.trust.scores import VARIANTS, PhotoData, ScoreBoard, components_for
from toptune_core.trust.unseen import leave_one_class_out, out_of_fold


class RecordingBoard(ScoreBoard):
    """A ScoreBoard that remembers which photos each call fitted on and scored."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def compute(self, train, query, labels):
        self.calls.append((np.asarray(train).copy(), np.asarray(query).copy()))
        return super().compute(train, query, labels)


@pytest.fixture(scope="session")
def small(small_dataset, lite0_extractor):
    """30 demo photos (10 per class): one-view 224 px features and their 7 x 7 maps."""
    dataset, _ = load_data(small_dataset)
    dataset = dataset.subset([i for c in range(3) for i in np.flatnonzero(dataset.labels == c)[:10]])
    paths = [str(p) for p in dataset.paths]
    model = MapModel("tf_efficientnet_lite0", 224)
    maps = feature_maps(paths, model)
    return dataset, PhotoData(lite0_extractor.features_of_photos(paths), maps), maps, paths


def test_maps_pool_to_the_features_the_extractor_gives(small, lite0_extractor):
    _, data, maps, _ = small
    assert maps.cells.shape == (30, 49, 1280) and maps.cells.dtype == np.float16 and maps.ok.all()
    np.testing.assert_allclose(np.linalg.norm(maps.cells.astype(np.float32), axis=2), 1.0, atol=2e-3)
    pooled, extracted = maps.pooled, data.views[:, 0]
    cos = (pooled * extracted).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(extracted, axis=1)
    assert cos.min() > 0.9999  # the map before pooling is the one the check's features come from


def test_out_of_fold_calibration_never_scores_a_photo_against_itself(small):
    dataset, data, _, _ = small
    labels = dataset.labels.copy()
    train = np.arange(0, 30, 3).tolist() + np.arange(1, 30, 3).tolist()
    train = np.asarray(sorted(train))
    board = RecordingBoard(PhotoData(data.views), k=1, components={"knn"})
    oof = out_of_fold(board, train, labels)
    assert len(board.calls) == 5
    queried = np.concatenate([q for _, q in board.calls])
    assert sorted(queried) == sorted(train)  # every training photo scored once...
    for fitted, query in board.calls:  # ...by a model fitted without it
        assert not np.intersect1d(fitted, query).size and set(fitted) | set(query) == set(train)
    assert (oof["knn"] > 0).all()  # a photo scored against itself would find itself at distance 0
    with pytest.raises(ValueError, match="against itself"):
        board.compute(train, train[:3], labels)


def test_the_patch_bank_is_built_from_training_photos_only(small):
    dataset, data, _, _ = small
    y = dataset.labels
    board = RecordingBoard(data, components={"knn", "patch"})
    tried = ["knn", "patch", "patch_leaf", "max(knn,patch)"]
    row = leave_one_class_out(data, y, dataset.classes, 0, board=board, variants=tried)
    assert len(board.banks_) == 6  # five out-of-fold banks and the final one
    for (fitted, _), bank in zip(board.calls, board.banks_):
        assert set(bank.cell_photo_) <= set(fitted)
    split = stratified_split(y, test_size=0.25, seed=0)
    final = set(board.banks_[-1].cell_photo_)
    assert not final & set(split.test_idx) and not final & set(np.flatnonzero(y == 0))  # no held-out, no left-out
    assert list(row["variants"]) == tried
    knn = row["variants"]["knn"]
    assert 0 <= knn["refused_unseen"] <= 1 and 0.5 <= knn["acceptance"] <= 1


def test_a_bank_keeps_a_coreset_of_the_cells(small):
    _, _, maps, _ = small
    bank = PatchBank(share=0.1).fit(maps.subset(np.arange(10)), np.arange(100, 110))  # 490 cells -> 49
    assert len(bank.cells_) == 49 and set(bank.cell_photo_) <= set(range(100, 110))
    scores = bank.score(maps.subset(np.arange(10, 14)))
    assert scores.shape == (4,) and (scores > 0).all()


def test_unseen_command_prints_and_writes_the_figures_of_each_score(tmp_path, subprocess_env):
    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 12)
    out = tmp_path / "unseen.json"
    scores = ["knn", "knn+margin", "class_knn", "patch", "max(knn,patch)"]  # every kind but the 1280-d Mahalanobis
    proc = subprocess.run([sys.executable, "-m", "toptune_core", "unseen", "--data", str(data), "--views", "1",
                           "--resolution", "224", "--json", str(out), "--scores", *scores],
                          env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [f["left_out"] for f in report["folds"]] == ["angular_leaf_spot", "bean_rust", "healthy"]
    for fold in report["folds"]:
        assert list(fold["variants"]) == scores
        for figures in fold["variants"].values():
            assert {"acceptance", "accuracy_accepted", "refused_unseen", "auroc", "far_refused"} <= set(figures)
    assert "angular_leaf_spot never learned" in proc.stdout and "| max(knn,patch) |" in proc.stdout
    assert report["load_average"] and report["maps_seconds_per_photo"] > 0
    bad = subprocess.run([sys.executable, "-m", "toptune_core", "unseen", "--data", str(data), "--scores", "nope"],
                         env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Unknown score 'nope'" in bad.stderr


def test_every_variant_names_what_it_needs():
    assert components_for(list(VARIANTS)) == {"knn", "margin", "maha_lw", "patch", "patch_mid"}
    assert components_for(["knn"]) == {"knn", "margin"}


def test_the_checks_threshold_is_stored_with_the_run_and_the_exported_bundle_agrees(tmp_path, lite0_extractor):
    import zipfile

    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache
    from toptune_core.portable.export import export_run
    from toptune_core.runs.store import RunStore
    from toptune_core.trust.familiarity import FILE, STRICTNESS, FamiliarityCheck

    store = RunStore(tmp_path / "home")
    run = run_toptuning(copy_subset(DEMO_DATASET, tmp_path / "beans", 12), classifier="logreg", views="1",
                        resolution=224, store=store, cache=FeatureCache(tmp_path / "f"), extractor=lite0_extractor)
    record = run.params["familiarity"]
    assert record["score"] == "knn"  # the score kept after every variant was measured (README)
    check = FamiliarityCheck.load(store.model_file(run.id, FILE))  # what the dashboard and `predict` load
    assert record["threshold"] == pytest.approx(check.threshold_)
    with zipfile.ZipFile(export_run(run.id, tmp_path / "model.zip", store=store)) as z:
        model = json.loads(z.read("model.json"))
        with np.load(io.BytesIO(z.read("familiarity.npz")), allow_pickle=False) as npz:
            calibration, k = npz["calibration"], int(npz["params"][0])
    assert k == record["k"] == check.k_
    for name, accept in model["familiarity"]["strictness"].items():  # predict.py's own threshold arithmetic
        assert accept == STRICTNESS[name]
        assert float(np.quantile(calibration, accept)) == pytest.approx(record["thresholds"][name])
