"""Where on the leaf: the backbone graph's map before pooling and the exact class maps of the logistic regression
(``toptune_core.explain``). Real weights, a real top-tuned run on real leaf photos (``tests.field_run``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.field_run import field_run, held_out_photos  # noqa: F401 - the session's run
from toptune_core.explain import linear_head, photo_maps, to_photo_orientation, view_class_maps
from toptune_core.features.featuremap import features_and_maps
from toptune_core.features.views import VIEW_SETS


@pytest.fixture(scope="session")
def explained(field_run):  # noqa: F811
    predictor = field_run.predictor()
    head, note = predictor.linear_head()
    assert head is not None, note
    return predictor, head, predictor.estimator.extractor


def test_the_graphs_second_output_is_the_map_whose_mean_is_the_features(explained):
    _, _, extractor = explained
    pixels = extractor.load_pixels(held_out_photos("bean_rust", 1)[0])[None]
    maps = features_and_maps(extractor, pixels)
    assert maps.maps.shape == (1, 8, 1280, 9, 9)  # NCHW per view: lite0 at 288 px
    assert np.abs(maps.maps.mean(axis=(3, 4)) - maps.features).max() < 1e-5
    assert np.abs(maps.features - extractor.features_of_views(pixels)).max() < 1e-5  # the extraction's features


def test_the_map_of_one_view_sums_to_the_class_logit_minus_its_intercept(explained):
    predictor, head, extractor = explained
    for cls in ("angular_leaf_spot", "bean_rust", "healthy"):
        photo = held_out_photos(cls, 1)[0]
        maps = features_and_maps(extractor, extractor.load_pixels(photo)[None])
        cells, logits = view_class_maps(head, maps.maps[0, 0])
        assert np.abs(cells.mean(axis=(1, 2)) - (logits - head.intercepts)).max() < 1e-4
        onnx = predictor.estimator.classifier_.predict_proba(maps.features[0, :1])[0]  # what the run predicts with
        assert np.abs(head.probabilities(head.scores(maps.features[0, :1]))[0] - onnx).max() < 1e-5


def test_a_photo_turned_a_quarter_gives_the_map_turned(explained, tmp_path):
    predictor, head, extractor = explained
    for photo in held_out_photos("angular_leaf_spot", 2):
        turned = tmp_path / f"{photo.stem}-turned.png"
        Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(turned)  # counter-clockwise, lossless
        upright = predictor.predict(photo, heatmaps=True)
        quarter = predictor.predict(turned, heatmaps=True)
        for cls, m in upright.heatmaps.items():
            expected, got = np.rot90(np.asarray(m)), np.asarray(quarter.heatmaps[cls])
            # the same 8 views in another order; only the centre crop moves by one pixel (329 px resized, 288 cut
            # from offset round(20.5) = 20: the turned photo's crop starts one pixel further along)
            rms = np.sqrt(np.mean(expected ** 2))
            assert np.sqrt(np.mean((expected - got) ** 2)) < 0.15 * rms
            assert np.corrcoef(expected.ravel(), got.ravel())[0, 1] > 0.99


def test_the_crop_turned_a_quarter_gives_exactly_the_map_turned(explained):
    """The 8 views of the turned crop are the 8 views of the crop in another order: the same map, turned."""
    _, head, extractor = explained
    crop = extractor.load_pixels(held_out_photos("bean_rust", 1)[0])
    upright, turned = (photo_maps(head, features_and_maps(extractor, x[None]).maps[0], extractor.views)["contrast"]
                       for x in (crop, np.ascontiguousarray(np.rot90(crop))))
    assert np.abs(np.rot90(upright, axes=(1, 2)) - turned).max() < 1e-4


def test_a_lesion_patch_pasted_on_a_healthy_leaf_draws_the_bean_rust_map(explained):
    """Ten healthy leaves, each with a 96 px lesion patch (3 x 3 cells) cut from a bean-rust photo where that
    photo's own bean-rust map is highest, pasted on the leaf elsewhere: the map follows the lesions."""
    _, head, extractor = explained
    rust = 1  # the run's classes: angular_leaf_spot, bean_rust, healthy

    def maps(pixels):
        return photo_maps(head, features_and_maps(extractor, pixels[None]).maps[0], extractor.views)

    rng, top_inside, rises = np.random.default_rng(1), 0, 0
    for donor, leaf in zip(held_out_photos("bean_rust", 10), held_out_photos("healthy", 10)):
        R, H = extractor.load_pixels(donor), extractor.load_pixels(leaf)
        mr = maps(R)["class"][rust]
        _, a, b = max((mr[i:i + 3, j:j + 3].sum(), i, j) for i in range(7) for j in range(7))
        y, x = rng.integers(2, 5, 2) * 32  # on the leaf: the middle of the crop
        patched = H.copy()
        patched[y:y + 96, x:x + 96] = R[32 * a:32 * a + 96, 32 * b:32 * b + 96]
        before, after = maps(H)["class"][rust], maps(patched)["class"][rust]
        inside = np.zeros((9, 9), dtype=bool)
        inside[y // 32:y // 32 + 3, x // 32:x // 32 + 3] = True
        top_inside += bool(inside.flat[after.argmax()])
        rises += bool((after - before)[inside].mean() > (after - before)[~inside].mean())
    assert top_inside >= 8 and rises == 10, (top_inside, rises)


def test_turning_a_view_back_undoes_the_view(explained):
    rng = np.random.default_rng(0)
    photo = rng.normal(size=(9, 9))
    for turns, mirror in VIEW_SETS["dihedral"]:
        view = np.rot90(photo, turns)
        view = view[:, ::-1] if mirror else view
        assert np.array_equal(to_photo_orientation(view, turns, mirror), photo)


def test_no_exact_map_for_kernel_ridge_or_the_random_forest(explained):
    from toptune_core.methods.classifiers import make_classifier
    from toptune_core.portable.top import classifier_to_onnx

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 16)).astype(np.float32), np.arange(60) % 3
    for kind in ("rf", "kernel"):
        clf = make_classifier(kind).fit(X, y)
        assert linear_head(classifier_to_onnx(clf, 16), [0, 1, 2], 3) is None
    assert linear_head(classifier_to_onnx(make_classifier("logreg").fit(X, y), 16), [0, 1, 2], 3) is not None


def test_predict_json_heatmaps_for_recognised_photos_only(field_run, tmp_path):  # noqa: F811
    import skimage.data

    from toptune_core.cli.main import main

    coffee = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(coffee, quality=92)
    photo, out = held_out_photos("bean_rust", 1)[0], tmp_path / "out.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOPTUNE_HOME", str(field_run.home))
        assert main(["predict", "--run", field_run.run_id, "--json", str(out), "--heatmaps", str(photo),
                     str(coffee)]) == 0
    leaf, cup = json.loads(out.read_text())["predictions"]
    assert not leaf["unknown"] and set(leaf["heatmaps"]) == {"angular_leaf_spot", "bean_rust", "healthy"}
    assert np.asarray(leaf["heatmaps"]["bean_rust"]).shape == (9, 9)
    assert cup["unknown"] and cup["heatmaps"] is None and "not recognised" in cup["heatmaps_note"]
