"""The fast extraction path computes what the plain path computes.

The plain path is timm's eval transform applied to a fully decoded photo, one
photo at a time, and the model on an NCHW batch. The fast path decodes in a
thread to 8-bit pixels (JPEG draft mode for large photos), normalises whole
batches channels-last, and streams. Speed itself is measured by
``python -m toptune_core bench``, not here.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toptune_core import system
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.backbones.pixels import eval_transform, resize_side
from toptune_core.system import torch_threads
from toptune_core.data.images import load_rgb
from toptune_core.config import DEMO_DATASET

PHOTOS = sorted(DEMO_DATASET.glob("*/*.jpg"))


def plain_tensor(extractor: FeatureExtractor, source) -> torch.Tensor:
    """The reference: full decode (no draft), timm's eval transform, one photo."""
    return eval_transform(extractor.data_config)(load_rgb(source))


def plain_features(extractor: FeatureExtractor, sources) -> np.ndarray:
    batch = torch.stack([plain_tensor(extractor, s) for s in sources])  # NCHW, contiguous
    model = extractor.model
    with torch.inference_mode():
        return model(batch).numpy()


def jpeg_bytes(im: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def camera_jpeg(photo: Path, size=(2048, 1536), exif_orientation=None) -> bytes:
    """A large JPEG made from a real leaf photo (upscaled, mild noise), optionally EXIF-rotated."""
    rng = np.random.default_rng(0)
    big = np.asarray(Image.open(photo).convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
    big = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(big)
    if exif_orientation is None:
        return jpeg_bytes(im)
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    return jpeg_bytes(im, exif=exif.tobytes())


@pytest.fixture(scope="module")
def lite0_model():
    return FeatureExtractor("tf_efficientnet_lite0", views="1").model


@pytest.fixture(scope="module", params=["lanes", "decode-threads"])
def small_batch_extractor(request, lite0_model):
    """Batches of 5, so batch boundaries, ordering and a partial last batch are exercised, in both CPU modes:
    two lanes (each decodes and runs the model), and two decoding threads feeding one model."""
    settings = {"lanes": dict(lanes=2, threads=1), "decode-threads": dict(lanes=1, decode_workers=2)}[request.param]
    extractor = FeatureExtractor("tf_efficientnet_lite0", views="1", batch_size=5, **settings)
    extractor._model = lite0_model  # the same loaded weights for both
    return extractor


def test_fast_preprocessing_is_bitwise_the_plain_transform(lite0_extractor, tmp_path):
    sources = [str(p) for p in PHOTOS[::60]]
    # A photo larger than the resize side but under twice it (no draft): resize + crop are really exercised.
    odd = Image.open(PHOTOS[0]).convert("RGB").resize((431, 300), Image.BICUBIC)
    odd.save(tmp_path / "odd.png")
    sources += [jpeg_bytes(odd), str(tmp_path / "odd.png")]
    for source in sources:
        fast = lite0_extractor.preprocess(source)
        assert fast.shape == (3, 224, 224) and fast.dtype == torch.float32
        assert torch.equal(fast, plain_tensor(lite0_extractor, source))


def test_extracted_features_equal_the_plain_path(small_batch_extractor, tmp_path):
    photos = [str(p) for p in PHOTOS[::25]]  # 12 photos from all three classes
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    sources = photos[:7] + [str(broken)] + photos[7:]
    result = small_batch_extractor.transform(sources)
    assert result.ok.tolist() == [True] * 7 + [False] + [True] * 5
    assert [i for i, _ in result.errors] == [7]
    expected = plain_features(small_batch_extractor, photos)
    assert result.features[:, 0].shape == expected.shape == (12, 1280)
    np.testing.assert_allclose(result.features[:, 0], expected, rtol=1e-4, atol=1e-4)
    # Not a vacuous comparison: the features of different photos differ far beyond the tolerance.
    assert np.abs(expected[0] - expected[1]).max() > 0.1


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_torch_thread_setting_is_restored(small_batch_extractor, engine):
    extractor = FeatureExtractor("tf_efficientnet_lite0", views="1", batch_size=5, lanes=small_batch_extractor.lanes,
                                 threads=small_batch_extractor.threads,
                                 decode_workers=small_batch_extractor.decode_workers, engine=engine)
    extractor._model = small_batch_extractor.model
    before = torch.get_num_threads()
    seen = []
    extractor.transform([str(p) for p in PHOTOS[:7]], progress=lambda p: seen.append(torch.get_num_threads()))
    # The PyTorch engine runs on the plan's threads; a graph engine leaves torch's setting alone.
    assert seen[-1] == (extractor.plan().threads if engine == "torch" else before)
    assert torch.get_num_threads() == before
    # Threads started afterwards (the dashboard runs each page in a new thread) get the old default too.
    in_new_thread = []
    t = threading.Thread(target=lambda: in_new_thread.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert in_new_thread == [before]
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_decoding_streams_a_bounded_number_of_batches_ahead(small_batch_extractor):
    """Memory stays flat: decoding never runs more than decode_workers + 1 batches ahead of the batch in the model."""
    photos = [str(p) for p in PHOTOS[:40]]
    lock, done, max_ahead = threading.Lock(), [0], [0]

    class Recording(list):
        def __getitem__(self, i):
            with lock:
                max_ahead[0] = max(max_ahead[0], i + 1 - done[0])
            return super().__getitem__(i)

    def progress(p):
        with lock:
            done[0] = int(p.done)

    result = small_batch_extractor.transform(Recording(photos), progress=progress)
    assert result.ok.all() and result.features[:, 0].shape == (40, 1280)
    np.testing.assert_allclose(result.features[:, 0][::13], plain_features(small_batch_extractor, photos[::13]),
                               rtol=1e-4, atol=1e-4)
    plan = small_batch_extractor.plan()
    # Started but not yet reported: lanes - the batches in the lanes, one finished waiting its turn and the one
    # being handed over; decode threads - the batch in the model and those queued behind it.
    bound = (plan.lanes + 2 if plan.lanes > 1 else plan.decode_workers + 2) * plan.batch_size
    assert 0 < max_ahead[0] <= bound


@pytest.mark.parametrize("size, factor", [
    ((4032, 3024), 8),  # 12 MP: 1/8 leaves 504x378, still >= 256
    ((3024, 4032), 8),  # the same, portrait
    ((2048, 1536), 4),  # 1/8 would leave 192 px < 256, so 1/4
    ((1200, 700), 2),  # 1/4 would leave 175 px
    ((1024, 512), 2),  # exactly twice the resize side
    ((600, 511), 1),  # shorter side under twice the resize side: never reduced
    ((300, 260), 1),
])
def test_draft_keeps_the_shorter_side_at_or_above_the_resize_side(size, factor):
    side = 256
    data = jpeg_bytes(Image.new("RGB", size, (90, 140, 60)))
    assert load_rgb(data).size == size
    drafted = load_rgb(data, min_size=side)
    assert drafted.size == (-(-size[0] // factor), -(-size[1] // factor))  # a power-of-two JPEG reduction
    assert min(drafted.size) >= side  # so the model's resize only ever shrinks


def test_draft_never_applies_to_non_jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1536), (10, 200, 30)).save(buf, "PNG")
    assert load_rgb(buf.getvalue(), min_size=256).size == (2048, 1536)


@pytest.mark.parametrize("orientation", [None, 6])
def test_draft_changes_the_crop_only_by_resampling_error(lite0_extractor, orientation):
    photo = PHOTOS[123]
    data = camera_jpeg(photo, exif_orientation=orientation)
    assert min(load_rgb(data, min_size=resize_side(lite0_extractor.data_config)).size) < 1536  # draft in use
    fast = lite0_extractor.preprocess(data)  # draft decode + fast preprocessing
    plain = plain_tensor(lite0_extractor, data)  # full 3-MP decode + timm's transform
    assert fast.shape == plain.shape
    diff = (fast - plain).abs()
    assert diff.mean() < 0.01  # normalised units: the input spans [-1, 1]
    # The same photo's crop shifted by 4 px (a wrong crop, not resampling) is far outside that tolerance.
    shifted = torch.roll(plain, shifts=4, dims=2)
    assert (shifted - plain).abs().mean() > 0.03
    feats = lite0_extractor.features_of(torch.stack([fast, plain]))
    cos = feats[0] @ feats[1] / np.linalg.norm(feats[0]) / np.linalg.norm(feats[1])
    assert cos > 0.99


def test_camera_photos_extract_like_the_plain_path(small_batch_extractor, tmp_path):
    """End to end with draft decoding: features of large JPEGs stay close to the full-decode features."""
    sources = []
    for i, photo in enumerate(PHOTOS[5::100]):
        path = tmp_path / f"camera_{i}.jpg"
        path.write_bytes(camera_jpeg(photo))
        sources.append(str(path))
    result = small_batch_extractor.transform(sources)
    expected = plain_features(small_batch_extractor, sources)
    cos = (result.features[:, 0] * expected).sum(1) / np.linalg.norm(result.features[:, 0], axis=1) / np.linalg.norm(expected, axis=1)
    assert result.ok.all() and (cos > 0.99).all()
    # Different photos are far apart, so the check above can fail.
    assert (expected[0] @ expected[1]) / np.linalg.norm(expected[0]) / np.linalg.norm(expected[1]) < 0.95


@pytest.mark.parametrize("cpus, lanes, threads", [(1, 1, 1), (2, 2, 1), (4, 4, 1), (16, 8, 2)])
def test_cpu_plan_follows_the_cpus_this_process_may_use(monkeypatch, cpus, lanes, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: None)  # no container CPU quota
    extractor = FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu")
    plan = extractor.plan()
    assert (plan.device, plan.lanes, plan.threads) == ("cpu", lanes, threads)
    assert plan.lanes * plan.threads <= cpus  # never more busy threads than CPUs
    assert extractor._model is None  # planning loads nothing


@pytest.mark.parametrize("cpus, decode", [(1, 0), (2, 1), (16, 4)])
def test_openvino_runs_one_request_on_every_cpu_fed_by_decoding_threads(monkeypatch, cpus, decode):
    """OpenVINO parallelises one request itself (faster than single-thread lanes: ``plan_for``)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: None)
    plan = FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu", engine="openvino", precision="f32").plan()
    assert (plan.engine, plan.lanes, plan.threads, plan.decode_workers) == ("openvino", 1, cpus, decode)
    explicit = FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu", engine="openvino", precision="f32",
                                lanes=2, threads=1).plan()
    assert (explicit.lanes, explicit.threads) == (2, 1)  # an explicit setting wins


def test_a_cgroup_cpu_quota_caps_the_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: 1.5)  # docker --cpus=1.5 on a 64-core host
    assert system.available_cpus() == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_match_the_cpu_plain_path(lite0_model):
    photos = [str(p) for p in PHOTOS[::50]]
    gpu = FeatureExtractor("tf_efficientnet_lite0", views="1", device="cuda", batch_size=4)
    result = gpu.transform(photos)
    assert gpu.plan().device == "cuda" and result.ok.all()
    cpu = FeatureExtractor("tf_efficientnet_lite0", views="1", device="cpu")
    cpu._model = lite0_model
    expected = plain_features(cpu, photos)
    cos = (result.features[:, 0] * expected).sum(1) / np.linalg.norm(result.features[:, 0], axis=1) / np.linalg.norm(expected, axis=1)
    assert (cos > 0.999).all()  # fp16 autocast: close, not equal
