"""Inference engines: the Pillow/NumPy pixels are timm's, every engine's f32 features are PyTorch's (within 1e-4)
for every offline backbone (bf16: tests/test_precision.py), and a broken exported graph falls back to PyTorch
with one clear line.

Speed is measured by ``python -m toptune_core bench``, not here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from toptune_core.backbones.catalogue import offline_backbones
from toptune_core.backbones.pixels import eval_data_config, eval_resize_crop, eval_transform, normalise
from toptune_core.config import DEMO_DATASET, Settings
from toptune_core.data.dataset import load_dataset
from toptune_core.data.images import load_rgb
from toptune_core.features import engines
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.features.graph import TOLERANCE, find_graph, graph_path

PHOTOS = sorted(DEMO_DATASET.glob("*/*.jpg"))


@pytest.fixture(autouse=True)
def own_graphs(tmp_path, monkeypatch):
    """These tests export, check and damage graphs: a folder of their own, not the session's (conftest)."""
    monkeypatch.setenv("TOPTUNE_GRAPHS", str(tmp_path / "graphs"))


@pytest.fixture(scope="module")
def lite0_cpu_model():
    """The PyTorch model on the CPU (graph engines run on the CPU, also on a machine with a GPU)."""
    return FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu").model


def _odd_photos(tmp_path) -> list:
    """Real leaf photos at sizes that exercise the resize and the crop: portrait, landscape, upscaled, odd."""
    base = Image.open(PHOTOS[7]).convert("RGB")
    out = [str(PHOTOS[0]), str(PHOTOS[150])]
    for i, size in enumerate([(431, 300), (300, 431), (180, 200), (257, 1000), (999, 293)]):
        path = tmp_path / f"odd_{i}.png"
        base.resize(size, Image.BICUBIC).save(path)
        out.append(str(path))
    return out


@pytest.mark.parametrize("backbone", offline_backbones())
def test_pillow_numpy_pixels_are_bitwise_timms_eval_transform(backbone, tmp_path):
    cfg = eval_data_config(backbone)
    timm_transform = eval_transform(cfg)  # Resize + CenterCrop + ToTensor + Normalize (torchvision)
    pillow_steps = timm_transform.transforms[:2]  # torchvision's Resize and CenterCrop
    for source in _odd_photos(tmp_path):
        im = load_rgb(source)
        ours = eval_resize_crop(im, cfg)
        theirs = im
        for step in pillow_steps:
            theirs = step(theirs)
        assert ours.dtype == np.uint8 and ours.shape == (cfg["input_size"][-1],) * 2 + (3,)
        np.testing.assert_array_equal(ours, np.asarray(theirs))
        # NumPy normalisation is bitwise torchvision's ToTensor + Normalize.
        np.testing.assert_array_equal(normalise(ours[None], cfg)[0], timm_transform(im).numpy())


def _features(extractor: FeatureExtractor, photos) -> np.ndarray:
    result = extractor.transform(photos)
    assert result.ok.all()
    return result.features[:, 0]


@pytest.mark.parametrize("backbone", offline_backbones())
def test_onnxruntime_features_match_pytorch(backbone, toptune_home):
    photos = [str(p) for p in PHOTOS[::37]]  # 9 photos, all three classes; batches of 4 leave a partial one
    torch_extractor = FeatureExtractor(backbone, views="1", engine="torch", device="cpu")
    expected = _features(torch_extractor, photos)
    fast = FeatureExtractor(backbone, views="1", engine="onnxruntime", device="cpu")
    fast._model = torch_extractor.model  # the same loaded weights for the export and the check
    got = _features(fast, photos)
    assert fast.engine_name == "onnxruntime" and "fell back" not in fast.engine_note
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.abs(expected[0] - expected[1]).max() > 0.1  # different photos differ far beyond the tolerance
    graph = find_graph(fast.model_identity, Settings.from_env(), "onnxruntime")
    assert graph is not None and graph.max_difference("onnxruntime") <= TOLERANCE
    # A fresh extractor finds the checked graph and runs it without loading the PyTorch model.
    again = FeatureExtractor(backbone, views="1", device="cpu")
    np.testing.assert_array_equal(again.features_of_photos([photos[0]])[:, 0], got[:1])
    assert again._model is None and again.engine_name == "onnxruntime"


@pytest.mark.skipif(not engines.installed("openvino"), reason="OpenVINO is not installed")
def test_openvino_features_match_pytorch(lite0_cpu_model, toptune_home):
    photos = [str(p) for p in PHOTOS[5::60]]
    reference = FeatureExtractor("tf_efficientnet_lite0", views="1", engine="torch", device="cpu")
    reference._model = lite0_cpu_model
    ov = FeatureExtractor("tf_efficientnet_lite0", views="1", engine="openvino", device="cpu", precision="f32")
    ov._model = lite0_cpu_model
    got = _features(ov, photos)
    assert ov.engine_name == "openvino"
    assert np.abs(got - _features(reference, photos)).max() <= TOLERANCE


def _damage_weights(path) -> None:
    """Rewrite the graph with one convolution's weights doubled: a valid graph computing wrong features."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight tensor
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
    onnx.save(model, str(path))


@pytest.mark.parametrize("damage", ["wrong weights", "not a graph"])
def test_a_broken_graph_falls_back_to_pytorch_with_one_clear_line(damage, lite0_cpu_model, small_dataset,
                                                                  toptune_home):
    settings = Settings.from_env()
    first = FeatureExtractor("tf_efficientnet_lite0", views="1", engine="onnxruntime", device="cpu")
    first._model = lite0_cpu_model
    first.load_engine()
    path = graph_path(first.model_identity, settings)
    assert path.is_file() and first.engine_name == "onnxruntime"
    if damage == "wrong weights":
        _damage_weights(path)
    else:
        path.write_bytes(b"\x08\x01this is not an ONNX graph" * 100)

    broken = FeatureExtractor("tf_efficientnet_lite0", views="1", engine="onnxruntime", device="cpu")
    broken._model = lite0_cpu_model
    lines = []
    fs = get_features(load_dataset(small_dataset), broken, FeatureCache(),
                      progress=lambda p: p.message and lines.append(p.message))
    fallback = [line for line in lines if "fell back to PyTorch" in line]
    assert len(fallback) == 1 and "\n" not in fallback[0]
    reason = "differ from PyTorch's" if damage == "wrong weights" else "cannot run the exported graph"
    assert reason in fallback[0], fallback[0]
    assert broken.engine_name == "torch"
    # Recorded with the features, and the features are PyTorch's own.
    assert fs.entry.meta["engine"] == "torch" and "fell back to PyTorch" in fs.entry.meta["engine_note"]
    reference = FeatureExtractor("tf_efficientnet_lite0", views="1", engine="torch", device="cpu")
    reference._model = lite0_cpu_model
    np.testing.assert_allclose(fs.entry.features[:5, 0], _features(reference, load_dataset(small_dataset).paths[:5]),
                               rtol=0, atol=TOLERANCE)
    # The bad graph was removed: the next extraction exports a good one again.
    assert not path.exists()
    healed = FeatureExtractor("tf_efficientnet_lite0", views="1", engine="onnxruntime", device="cpu")
    healed._model = lite0_cpu_model
    healed.load_engine()
    assert healed.engine_name == "onnxruntime" and json.loads(path.with_suffix(".json").read_text())["checks"]


def test_unknown_engine_is_one_clear_line():
    from toptune_core.errors import ToptuneError

    with pytest.raises(ToptuneError, match="Unknown inference engine 'tensorrt'"):
        FeatureExtractor("tf_efficientnet_lite0", views="1", engine="tensorrt")


def test_engine_defaults():
    assert engines.resolve("auto", on_cuda=True) == "torch"  # PyTorch stays the engine on a CUDA GPU
    assert engines.resolve("auto", on_cuda=False, precision="f32") == engines.DEFAULT_CPU_ENGINE  # (bf16: see
    # tests/test_precision.py)
    assert Settings.from_env({"TOPTUNE_ENGINE": "OpenVINO"}).engine == "openvino"
