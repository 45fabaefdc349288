"""The kernel classifier and the automatic choice: real leaf features, cross-validation on training photos only."""

from __future__ import annotations

import numpy as np
import pytest

from toptune_core.data.dataset import load_dataset
from toptune_core.experiment import run_toptuning, summary
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.methods.classifiers import fit_classifier, make_classifier
from toptune_core.methods.kernel import NystroemKernelClassifier, _Spectrum, _unit
from tests.conftest import DEMO_DATASET, copy_subset


@pytest.fixture(scope="module")
def leaf_features(small_dataset, lite0_extractor, tmp_path_factory):
    """lite0 features of the 60 real photos (20 per class) and their labels."""
    entry = get_features(load_dataset(small_dataset), lite0_extractor,
                         FeatureCache(tmp_path_factory.mktemp("features"))).entry
    return entry.features[:, 0], load_dataset(small_dataset).labels  # one view (the extractor's set is "1")


def _halves(labels):
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        test[np.flatnonzero(labels == c)[::4]] = True  # 5 of each class's 20 held out
    return ~test, test


@pytest.mark.parametrize("n_components", [1000, 24])  # every training photo a centre; a real Nyström subset
def test_kernel_probabilities_sum_to_one_and_agree_with_predictions(leaf_features, n_components):
    X, y = leaf_features
    train, test = _halves(y)
    clf = make_classifier("kernel", random_state=0).set_params(n_components=n_components)
    seconds = fit_classifier(clf, X[train], y[train])
    proba = clf.predict_proba(X[test])
    assert proba.shape == (test.sum(), 3) and np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X[test]))
    assert (clf.predict(X[test]) == y[test]).mean() >= 0.6  # chance is 1/3
    # Calibrated, not one-hot: a fitted temperature keeps some doubt, and the most confident class is not certain.
    assert 0 < clf.temperature_ < 10 and proba.max(axis=1).min() < 0.99
    assert clf.n_centres_ == min(n_components, train.sum())
    assert clf.gamma_ in clf.gammas and clf.alpha_ in clf.alphas and seconds < 30
    assert len(clf.cv_results_) == len(clf.gammas) * len(clf.alphas)


def test_left_out_scores_equal_refitting_without_the_group(leaf_features):
    """The closed-form cross-validation is the real thing: refit without a photo (or a group) and score it."""
    X, y = leaf_features
    X = _unit(X[:30])
    Y = np.eye(3)[y[:30]]
    gamma, alpha = 1.0, 0.01
    groups = [np.array([3, 17]), np.array([8, 9, 25])]
    spectrum = _Spectrum(X @ X.T, None, gamma)
    closed = spectrum.left_out_scores(Y, alpha, groups)
    K = np.exp(-gamma * np.maximum(2 - 2 * X @ X.T, 0))
    for left_out in ([0], [12], [3, 17], [8, 9, 25]):
        keep = np.setdiff1d(np.arange(30), left_out)
        coef = np.linalg.solve(K[np.ix_(keep, keep)] + alpha * np.eye(len(keep)), Y[keep])
        np.testing.assert_allclose(closed[left_out], K[np.ix_(left_out, keep)] @ coef, atol=1e-6)


def test_auto_picks_by_the_estimate_and_records_the_table(leaf_features):
    from toptune_core.model_selection import choose

    X, y = leaf_features
    clf = make_classifier("auto", random_state=0)
    fit_classifier(clf, X, y)
    table = clf.describe()["cv_table"]
    assert [r["classifier"] for r in table] == ["logreg", "rf", "kernel"]  # cheapest first
    assert [r["chosen"] for r in table].count(True) == 1
    assert clf.chosen_ == table[choose([dict(r) for r in table])]["classifier"]  # the rule, on the recorded folds
    assert all(len(r["fold_accuracies"]) == 5 and 0 <= r["std_error"] and r["fit_seconds"] > 0 for r in table)
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0, atol=1e-6)  # float32 features: float32 probabilities


def test_auto_needs_two_training_photos_per_class(leaf_features):
    X, y = leaf_features
    keep = np.r_[np.flatnonzero(y == 0)[:1], np.flatnonzero(y == 1)[:5], np.flatnonzero(y == 2)[:5]]
    with pytest.raises(Exception, match="at least 2 training photos of every class"):
        fit_classifier(make_classifier("auto"), X[keep], y[keep])


@pytest.mark.parametrize("classifier", ["auto", "kernel"])
def test_changing_the_held_out_photos_changes_no_choice(classifier, small_dataset, lite0_extractor, tmp_path):
    """Cross-validation sees the training photos only: two runs with the same training folder and different
    separate test folders choose the same classifier and the same hyper-parameters (and score differently)."""
    first = copy_subset(DEMO_DATASET, tmp_path / "test_a", 10, skip=20)  # the training folder has photos 0-19
    second = copy_subset(DEMO_DATASET, tmp_path / "test_b", 10, skip=30)
    runs = [run_toptuning(small_dataset, test_data=folder, classifier=classifier, extractor=lite0_extractor)
            for folder in (first, second)]
    choices = [r.params["classifier_choice"] for r in runs]
    assert runs[0].split["test_files"] != runs[1].split["test_files"]
    if classifier == "auto":
        assert choices[0]["chosen"] == choices[1]["chosen"]
        no_times = [[{k: v for k, v in row.items() if k != "fit_seconds"} for row in c["cv_table"]] for c in choices]
        assert no_times[0] == no_times[1]
        assert choices[0].get("chosen_settings") == choices[1].get("chosen_settings")
        assert summary(runs[0])["chosen_classifier"] == choices[0]["chosen"]
    else:
        assert {k: choices[0][k] for k in ("gamma", "alpha", "temperature", "cv_accuracy")} == \
               {k: choices[1][k] for k in ("gamma", "alpha", "temperature", "cv_accuracy")}
        assert summary(runs[0])["chosen_classifier"] == "kernel"


def test_kernel_class_rejects_nothing_it_cannot_fit():
    """Two classes, a handful of photos each: the kernel still fits and gives probabilities."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (6, 8)) + 3, rng.normal(0, 1, (6, 8)) - 3]
    y = np.array(["a"] * 6 + ["b"] * 6)
    clf = NystroemKernelClassifier().fit(X, y)
    assert list(clf.predict(X[[0, 11]])) == ["a", "b"]
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0)


@pytest.mark.parametrize("kind", ["kernel", "auto"])
def test_the_onnx_classifier_gives_the_same_probabilities(leaf_features, kind):
    """Default runs stay portable: the kernel writes its own ONNX graph, the automatic choice exports its pick."""
    from toptune_core.portable.top import OnnxClassifier, classifier_to_onnx

    X, y = leaf_features
    train, test = _halves(y)
    clf = make_classifier(kind)
    fit_classifier(clf, X[train], y[train])
    onnx = OnnxClassifier(classifier_to_onnx(clf, X.shape[1]), clf.classes_, 3)
    np.testing.assert_allclose(onnx.predict_proba(X[test]), clf.predict_proba(X[test]), atol=1e-6)
