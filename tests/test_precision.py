"""The engine's precision: bf16 where the CPU has it, f32 elsewhere, chosen once; bf16 features are PyTorch's f32
within the stated tolerance on real leaf photos; the precision is part of the feature cache's key and of the
record; a bf16 engine that fails its check runs f32 instead and says so.

The bf16 tests run where this CPU computes bf16 natively and OpenVINO is installed (skipped elsewhere); the rule
of the choice is tested for every kind of machine. Speed: ``python -m toptune_core bench``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from toptune_core.config import DEMO_DATASET, Settings
from toptune_core.data.dataset import load_dataset
from toptune_core.errors import ToptuneError
from toptune_core.features import engines, graph
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.features.graph import BF16_MEAN_COSINE, BF16_MIN_COSINE, cosine_similarities, graph_path

from tests.conftest import copy_subset

PHOTOS = sorted(DEMO_DATASET.glob("*/*.jpg"))
BF16_HERE = engines.installed("openvino") and engines.cpu_has_bf16()
needs_bf16 = pytest.mark.skipif(not BF16_HERE, reason="this CPU has no native bf16, or OpenVINO is not installed")


# --- the choice (any machine) ------------------------------------------------------------------------------------

def _everything(name: str) -> bool:
    return True


def test_auto_is_openvino_bf16_where_the_cpu_has_it_else_onnxruntime_f32():
    choose = engines.choose
    assert choose("auto", "auto", False, bf16_cpu=True, available=_everything) == engines.Choice("openvino", "bf16")
    assert choose("auto", "auto", False, bf16_cpu=False, available=_everything) == engines.Choice("onnxruntime", "f32")
    assert choose("auto", "f32", False, bf16_cpu=True, available=_everything) == engines.Choice("onnxruntime", "f32")
    without_openvino = lambda name: name != "openvino"  # noqa: E731
    assert choose("auto", "auto", False, bf16_cpu=True, available=without_openvino) == \
        engines.Choice("onnxruntime", "f32")
    only_torch = lambda name: name == "torch"  # noqa: E731
    assert choose("auto", "auto", False, bf16_cpu=False, available=only_torch) == engines.Choice("torch", "f32")
    # CUDA: PyTorch, fp16 autocast as before (the GPU still extracts); f32 when asked
    assert choose("auto", "auto", True, bf16_cpu=True, available=_everything) == engines.Choice("torch", "f16")
    assert choose("auto", "f32", True, bf16_cpu=True, available=_everything) == engines.Choice("torch", "f32")
    # a named engine: OpenVINO in bf16 where it can; ONNX Runtime always f32
    assert choose("openvino", "auto", False, bf16_cpu=True, available=_everything) == engines.Choice("openvino", "bf16")
    assert choose("openvino", "auto", False, bf16_cpu=False, available=_everything).precision == "f32"
    assert choose("onnxruntime", "auto", False, bf16_cpu=True, available=_everything) == \
        engines.Choice("onnxruntime", "f32")


def test_asking_for_bf16_where_it_cannot_run_says_why_in_the_choice():
    no_bf16 = engines.choose("auto", "bf16", False, bf16_cpu=False, available=_everything)
    assert (no_bf16.engine, no_bf16.precision) == ("onnxruntime", "f32") and "no native bf16" in no_bf16.note
    ort = engines.choose("onnxruntime", "bf16", False, bf16_cpu=True, available=_everything)
    assert ort.precision == "f32" and "ONNX Runtime runs f32" in ort.note
    missing = engines.choose("auto", "bf16", False, bf16_cpu=True, available=lambda name: name != "openvino")
    assert missing.precision == "f32" and "OpenVINO, which is not installed" in missing.note


def test_precision_setting_and_a_wrong_value():
    assert Settings.from_env({"TOPTUNE_PRECISION": " BF16 "}).precision == "bf16"
    assert Settings.from_env({}).precision == "auto"
    with pytest.raises(ToptuneError, match="Unknown precision 'int8'. Choose one of: auto, f32, bf16."):
        FeatureExtractor("tf_efficientnet_lite0", views="1", precision="int8")
    f32 = FeatureExtractor("tf_efficientnet_lite0", views="1", precision="f32", device="cpu")
    assert f32.cache_identity["precision"] == "f32" and f32.engine_record["precision"] == "f32"
    assert f32._model is None and f32._engine is None  # the plan loads nothing


@pytest.mark.skipif(not engines.installed("openvino"), reason="OpenVINO is not installed")
def test_the_cpus_flags_say_what_openvino_reports():
    """``cpu_has_bf16`` reads the CPU's flags (no import); OpenVINO's "BF16" capability is the authority."""
    assert engines.cpu_has_bf16() == engines.openvino_reports_bf16()


# --- bf16 on this machine ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite0_cpu_model():
    return FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu", precision="f32").model


@pytest.fixture(scope="module")
def graph_home(tmp_path_factory, lite0_cpu_model) -> Settings:
    """A data folder whose lite0 graph (default resolution) passed its f32 and bf16 checks (made once here)."""
    settings = Settings.from_env({"TOPTUNE_HOME": str(tmp_path_factory.mktemp("graph_home"))})
    if BF16_HERE:
        _extractor(settings, lite0_cpu_model, "bf16").load_engine()
    return settings


def _extractor(settings: Settings, model, precision: str, engine: str = "auto") -> FeatureExtractor:
    extractor = FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu", settings=settings,
                                 precision=precision, engine=engine)
    extractor._model = model  # the same loaded weights for the export, the checks and the reference
    return extractor


@needs_bf16
def test_bf16_features_are_pytorchs_f32_within_the_stated_tolerance(graph_home, lite0_cpu_model):
    step = len(PHOTOS) // graph.BF16_CHECK_PHOTOS  # (the check's photos: every step-th)
    photos = [str(p) for i, p in enumerate(PHOTOS) if i % 12 == 5 and i % step]  # 24 real leaf photos, every class
    bf16 = _extractor(graph_home, lite0_cpu_model, "auto")
    got = bf16.transform(photos).features[:, 0]
    assert (bf16.engine_name, bf16.engine_precision) == ("openvino", "bf16")
    assert "graph checked in bf16: cosine similarity" in bf16.engine_note
    reference = _extractor(graph_home, lite0_cpu_model, "f32", engine="torch").transform(photos).features[:, 0]
    cosines = cosine_similarities(got, reference)
    assert cosines.min() >= BF16_MIN_COSINE and cosines.mean() >= BF16_MEAN_COSINE, (cosines.min(), cosines.mean())
    assert np.abs(got - reference).max() > 1e-3, "bf16 really ran (f32 would agree within 1e-4)"
    alone = bf16.features_of_photos([photos[0]])[0, 0]  # a single photo (a prediction) is within the same bounds
    assert cosine_similarities(alone[None], reference[:1])[0] >= BF16_MIN_COSINE


@needs_bf16
def test_precision_is_part_of_the_cache_key_and_the_record(graph_home, lite0_cpu_model, tmp_path):
    dataset = load_dataset(copy_subset(DEMO_DATASET, tmp_path / "beans", 3))
    cache = FeatureCache(settings=graph_home)
    bf16 = get_features(dataset, _extractor(graph_home, lite0_cpu_model, "auto"), cache)
    f32 = get_features(dataset, _extractor(graph_home, lite0_cpu_model, "f32"), cache)
    assert not bf16.cache_hit and not f32.cache_hit and bf16.entry.key != f32.entry.key
    assert (bf16.entry.meta["engine"], bf16.entry.meta["precision"]) == ("openvino", "bf16")
    assert (f32.entry.meta["engine"], f32.entry.meta["precision"]) == ("onnxruntime", "f32")
    assert np.abs(bf16.entry.features - f32.entry.features).max() > 1e-3  # different features, different entries
    again = get_features(dataset, _extractor(graph_home, lite0_cpu_model, "bf16"), cache)
    assert again.cache_hit and again.entry.key == bf16.entry.key


@needs_bf16
def test_bf16_that_fails_its_check_runs_f32_and_says_so(graph_home, lite0_cpu_model, small_dataset, tmp_path,
                                                         monkeypatch):
    # This home's graph passed its f32 checks; its bf16 check is to be done again, against a limit bf16 cannot meet.
    settings = Settings.from_env({"TOPTUNE_HOME": str(tmp_path / "home")})
    shutil.copytree(graph_home.graphs_dir, settings.graphs_dir)
    probe = _extractor(settings, lite0_cpu_model, "auto")
    record_path = graph_path(probe.model_identity, settings).with_suffix(".json")
    record = json.loads(record_path.read_text())
    del record["checks"]["openvino:bf16"]
    record_path.write_text(json.dumps(record))
    monkeypatch.setattr(graph, "BF16_MIN_COSINE", 0.99999)

    lines = []
    first = _extractor(settings, lite0_cpu_model, "auto")
    assert first.cache_identity["precision"] == "bf16"  # planned before the check
    dataset = load_dataset(copy_subset(DEMO_DATASET, tmp_path / "beans", 2))
    fs = get_features(dataset, first, FeatureCache(settings=settings),
                      progress=lambda p: p.message and lines.append(p.message))
    fallback = [line for line in lines if "bf16 fell back to f32" in line]
    assert len(fallback) == 1 and "too far from PyTorch's f32" in fallback[0] and "\n" not in fallback[0]
    assert (first.engine_name, first.engine_precision) == ("onnxruntime", "f32")
    assert (fs.entry.meta["precision"], fs.entry.meta["engine"]) == ("f32", "onnxruntime")
    assert "bf16 fell back to f32" in fs.entry.meta["engine_note"]
    assert fs.entry.key == FeatureCache.key(dataset.fingerprint(), first.cache_identity)  # filed as what ran: f32
    assert "openvino:bf16" in json.loads(record_path.read_text())["failed"]

    monkeypatch.undo()  # even with the usual limit, a later extractor plans f32 at once from the record
    later = _extractor(settings, lite0_cpu_model, "auto")
    assert (later.engine_name, later.engine_precision) == ("onnxruntime", "f32")
    assert "bf16 fell back to f32" in later._planned_choice().note
    hit = get_features(dataset, later, FeatureCache(settings=settings))
    assert hit.cache_hit and later._engine is None
