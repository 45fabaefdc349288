"""The estimate for new photos: session groups (likely the same plant or session) kept together by every fold
and split, every view of a photo with it, and the rule that prefers the cheaper classifier within the noise.
Real lite0 features of real leaf photos where features matter."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import copy_subset
from toptune_core.config import DEMO_DATASET
from toptune_core.data.dataset import load_dataset
from toptune_core.data.groups import session_groups
from toptune_core.data.split import grouped_split
from toptune_core.features import views
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.methods.auto import cv_folds
from toptune_core.methods.classifiers import make_classifier
from toptune_core.model_selection import choose, estimate, group_folds


def test_the_rule_keeps_the_cheaper_model_unless_another_is_better_beyond_the_noise():
    cheap = {"fold_accuracies": [0.90, 0.92, 0.88, 0.91, 0.89]}
    within_noise = {"fold_accuracies": [0.93, 0.89, 0.90, 0.92, 0.88]}  # +0.004 on average, paired diffs noisy
    clearly_better = {"fold_accuracies": [0.95, 0.96, 0.93, 0.95, 0.94]}  # +0.046, every fold better
    assert choose([cheap, within_noise]) == 0
    assert choose([cheap, clearly_better]) == 1
    assert choose([cheap, within_noise, clearly_better]) == 2
    rows = [cheap, dict(cheap)]  # a tie is no reason to pay more
    assert choose(rows) == 0 and rows[1]["gap_to_best"] == 0.0


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    data = copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("est") / "beans", 30)
    ds = load_dataset(data)
    entry = get_features(ds, FeatureExtractor("tf_efficientnet_lite0", views="flip"),
                         FeatureCache(tmp_path_factory.mktemp("cache"))).entry
    return ds, entry.features


def test_session_groups_hold_near_duplicates_and_look_alike_framings(demo_features):
    ds, F = demo_features
    groups = session_groups(F)
    assert len(groups) == len(ds) and 1 < len(set(groups)) < len(ds)
    edited = F.copy()
    edited[1] = F[0] * 1.01  # a re-encoded copy of photo 0: near-duplicate, so one group
    again = session_groups(edited)
    assert again[0] == again[1]
    U = views.photo_embedding(F[:, :1])
    sims = U @ U.T
    for g in np.flatnonzero(np.bincount(groups) == 2):  # a pair joined only if alike (average linkage at 0.80)
        a, b = np.flatnonzero(groups == g)
        assert sims[a, b] >= 0.80 - 1e-5
    assert (np.bincount(groups) == 2).any()


def test_no_fold_or_split_separates_a_session_or_the_views_of_a_photo(demo_features):
    ds, F = demo_features
    y, groups = ds.labels, session_groups(F)
    for train, test in group_folds(y, groups, 5, seed=0):
        assert not set(groups[train]) & set(groups[test])
    _, rows_y, rows_groups = views.flatten(F, y, groups)
    photo_of_row = np.repeat(np.arange(len(y)), F.shape[1])
    for train, test in cv_folds(rows_y, rows_groups, 5, seed=0):  # the automatic choice's folds, on rows
        assert not set(photo_of_row[train]) & set(photo_of_row[test])
        assert not set(rows_groups[train]) & set(rows_groups[test])
    split = grouped_split(y, groups, test_size=0.25, seed=0)
    assert not set(groups[split.train_idx]) & set(groups[split.test_idx])


def test_the_estimate_scores_photos_with_their_views_averaged(demo_features):
    ds, F = demo_features
    y, groups = ds.labels, session_groups(F)
    folds = group_folds(y, groups, 5, seed=0)
    row = estimate(lambda: make_classifier("logreg"), F, y, folds, groups=groups)
    assert len(row["fold_accuracies"]) == 5 and 0.6 < row["mean_accuracy"] <= 1.0 and row["std_error"] >= 0
    train, test = folds[0]
    clf = make_classifier("logreg")
    X, rows_y, _ = views.flatten(F[train], y[train])
    clf.fit(X, rows_y)
    n, v, d = F[test].shape
    by_hand = views.average(clf.predict_proba(F[test].reshape(n * v, d)), v).argmax(axis=1) == y[test]
    assert row["fold_accuracies"][0] == pytest.approx(by_hand.mean())
