"""The exported backbone graph: the frozen backbone as one ONNX file that ONNX Runtime or OpenVINO runs.

One graph per feature-cache identity (backbone, weights, preprocessing, timm
version) and ``GRAPH_FORMAT``, kept under ``$TOPTUNE_HOME/graphs/`` beside the
feature cache. The graph takes what the pixel pipeline produces, (N, H, W, 3)
uint8 pixels, and does timm's normalisation ((x / 255 - mean) / std) and the
channels transpose itself, so a caller needs only NumPy and Pillow; its first
output ``features`` is the (N, dim) float32 pooled features (what every engine
reads), and for a backbone whose ``forward_features`` gives a spatial map its
second output ``feature_map`` is that map before pooling, (N, dim, rows, cols)
float32 (NCHW; 1280 x 9 x 9 for tf_efficientnet_lite0 at 288 px), whose mean
over the cells is ``features``: the class maps (``toptune_core.explain``) read
it through ``features.featuremap``.

Built once (``prepare_graph``): exported from the PyTorch model
(``torch.onnx.export``) to a temporary file, checked against PyTorch's f32
features with the engine and precision that will run it, and only then renamed
into place beside a record (``<name>.json``: its SHA-256 and each engine's
check, under ``check_key``). The tolerance depends on the precision:

* f32: on fixed check images, the largest difference at most ``TOLERANCE`` (1e-4);
* bf16: on real leaf photos (``BF16_CHECK_PHOTOS`` of the demo set), the cosine
  similarity of every photo's features to PyTorch's at least ``BF16_MIN_COSINE``
  and their mean at least ``BF16_MEAN_COSINE``. (bf16 keeps 8 bits of mantissa:
  features differ by up to 0.4 in absolute terms, so 1e-4 cannot hold; what
  a classifier on top needs is their direction. On the full iBean set at 288 px
  OpenVINO bf16 gave cosine 0.9992 on average, 0.9972 at the lowest. Synthetic
  check images are no test of bf16: a smooth colour ramp gave 0.977.)

A later process reads the record and the file's checksum and needs no torch at
all. A graph file that has no record for the engine, or no longer matches its
record, is checked again; one that fails an f32 check is removed and reported
as a ``GraphError`` (one line), and the extractor falls back to PyTorch (the
next extraction exports afresh). A failed bf16 check keeps the graph (it is the
precision that failed), is recorded (``bf16_failed``), and the extractor runs
f32 instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from toptune_core.config import Settings
from toptune_core.errors import ToptuneError
from toptune_core.features.engines import LABELS, open_graph_engine
from toptune_core.files import file_sha256

if TYPE_CHECKING:
    import torch

GRAPH_FORMAT = 2  # uint8 NHWC pixels in, normalisation inside, pooled features out (+ the map before pooling)
TOLERANCE = 1e-4  # f32: largest absolute difference from PyTorch's features
BF16_MIN_COSINE = 0.995  # bf16: every check photo's cosine similarity to PyTorch's f32 features, at least
BF16_MEAN_COSINE = 0.998  # bf16: and their mean, at least
BF16_CHECK_PHOTOS = 8  # real leaf photos of the demo set the bf16 check runs on
INPUT, OUTPUT, MAP_OUTPUT = "pixels", "features", "feature_map"
OPSET = 17


class GraphError(ToptuneError):
    """The backbone could not be exported, or its graph does not compute PyTorch's features."""


@dataclass(frozen=True)
class BackboneGraph:
    path: Path
    record: dict

    @property
    def sha256(self) -> str:
        return self.record["sha256"]

    def max_difference(self, engine: str) -> float:
        return float(self.record["checks"][engine])

    def check_summary(self, engine: str, precision: str = "f32") -> str:
        """The check ``engine`` passed in ``precision``, in words (the extractor's ``engine_note``)."""
        check = self.record["checks"][check_key(engine, precision)]
        if precision == "f32":
            return f"graph checked: features within {float(check):.1g} of PyTorch's"
        return (f"graph checked in {precision}: cosine similarity to PyTorch's f32 features {check['mean_cosine']:.4f} "
                f"on average, {check['min_cosine']:.4f} at the lowest")


def check_key(engine: str, precision: str = "f32") -> str:
    """Where a graph record keeps ``engine``'s check in ``precision``: the engine's name for f32, as before."""
    return engine if precision == "f32" else f"{engine}:{precision}"


def graph_path(identity: dict, settings: Settings) -> Path:
    key = hashlib.sha256(json.dumps({**identity, "graph_format": GRAPH_FORMAT}, sort_keys=True).encode()).hexdigest()
    return settings.graphs_dir / f"{identity['backbone']}-{key[:20]}.onnx"


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def find_graph(identity: dict, settings: Settings, engine: str, precision: str = "f32") -> BackboneGraph | None:
    """The graph for ``identity`` when it is on disk, matches its record and passed the check with ``engine`` in
    ``precision``. Reads files only (no torch)."""
    path = graph_path(identity, settings)
    try:
        record = json.loads(_record_path(path).read_text())
        if check_key(engine, precision) in record.get("checks", {}) and path.is_file() \
                and file_sha256(path) == record.get("sha256"):
            return BackboneGraph(path, record)
    except (OSError, ValueError, AttributeError):
        pass
    return None


def bf16_failed(identity: dict, settings: Settings, engine: str) -> str:
    """Why ``engine`` in bf16 failed its check on the graph for ``identity`` ("" when it did not, or was not
    checked). Reads the record only: a later process runs f32 at once instead of checking again."""
    record = _read_record(graph_path(identity, settings))
    return str(record.get("failed", {}).get(check_key(engine, "bf16"), "")) if isinstance(record.get("failed"), dict) \
        else ""


def prepare_graph(identity: dict, settings: Settings, engine: str, model: Callable[[], "torch.nn.Module"],
                  data_config: dict, precision: str = "f32") -> BackboneGraph:
    """The checked graph for ``identity`` and ``engine`` in ``precision``: found on disk, or checked, or exported
    and checked.

    ``model()`` gives the PyTorch model (CPU, eval), called only when a check or
    an export is needed. Raises ``GraphError`` (one line) when the export fails
    or the graph's features are not PyTorch's within the precision's tolerance.
    """
    if precision != "f32":  # the graph itself is checked in f32 first: a failure below is the precision's
        prepare_graph(identity, settings, engine, model, data_config)
    found = find_graph(identity, settings, engine, precision)
    if found is not None:
        return found
    path = graph_path(identity, settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GraphError(f"cannot write the graph folder '{path.parent}' ({e.strerror or e})") from None
    with _lock(path):
        found = find_graph(identity, settings, engine, precision)  # another process may have built it meanwhile
        if found is not None:
            return found
        record = _read_record(path)
        key = check_key(engine, precision)
        if precision != "f32":  # the graph is on disk and passed its f32 check (above)
            sha = file_sha256(path)
            checks = record.get("checks", {})
            try:
                result = check_graph_bf16(path, engine, model(), data_config)
            except GraphError as e:
                _write_record(path, {**record, "failed": {**(record.get("failed") or {}), key: str(e)}})
                raise
        elif path.is_file():  # on disk but not checked with this engine, or changed since: check it
            sha = file_sha256(path)
            checks = record.get("checks", {}) if record.get("sha256") == sha else {}
            result = _checked(path, engine, model(), data_config)
        else:
            tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                export_graph(model(), data_config, tmp)
                result = _checked(tmp, engine, model(), data_config)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            sha, checks = file_sha256(path), {}
        failed = {k: v for k, v in (record.get("failed") or {}).items() if k != key} \
            if record.get("sha256") == sha else {}
        record = {**identity, "graph_format": GRAPH_FORMAT, "sha256": sha, "checks": {**checks, key: result},
                  "failed": failed, "tolerance": TOLERANCE,
                  "bf16_tolerance": {"min_cosine": BF16_MIN_COSINE, "mean_cosine": BF16_MEAN_COSINE}}
        _write_record(path, record)
        return BackboneGraph(path, record)


def _checked(path: Path, engine: str, model, data_config: dict) -> float:
    """``check_graph``; a graph that fails it is removed with its record (the next extraction exports afresh)."""
    try:
        return check_graph(path, engine, model, data_config)
    except GraphError:
        path.unlink(missing_ok=True)
        _record_path(path).unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(_record_path(path).read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_record(path: Path, record: dict) -> None:
    target = _record_path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GraphError(f"cannot write the graph record '{target}' ({e.strerror or e})") from None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One process at a time builds or checks a given graph (others wait, then find it built)."""
    with open(path.with_name(f".{path.stem}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_graph(model: "torch.nn.Module", data_config: dict, path: Path, *, with_map: bool = True) -> None:
    """Export ``model`` (pooled features) behind timm's normalisation: uint8 NHWC pixels in, features out; and,
    when ``with_map`` and the model is a timm model whose ``forward_features`` gives a (N, C, H, W) map, that
    map as the second output ``feature_map`` (pooled by ``forward_head``, so ``features`` is unchanged)."""
    import torch

    size = int(data_config["input_size"][-1])
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    wrapped = pixels_model(model, data_config["mean"], data_config["std"])
    outputs = [OUTPUT]
    if with_map and _has_spatial_map(model, size):
        wrapped, outputs = pixels_model(_WithMap(model), data_config["mean"], data_config["std"]), [OUTPUT, MAP_OUTPUT]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(path), input_names=[INPUT], output_names=outputs,
                              dynamic_axes={INPUT: {0: "n"}, **{name: {0: "n"} for name in outputs}},
                              opset_version=OPSET, dynamo=False)
    except Exception as e:  # any exporter failure means "no graph": the caller falls back to PyTorch
        raise GraphError(f"the backbone could not be exported to ONNX ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from None


def _has_spatial_map(model, size: int) -> bool:
    """Whether ``model`` is a timm model whose ``forward_features`` gives a (N, C, H, W) map (CNNs; not ViTs)."""
    import torch

    if not (callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))):
        return False
    try:
        with torch.no_grad():
            x = torch.zeros((1, 3, size, size), device=next(model.parameters()).device)
            return model.forward_features(x).ndim == 4
    except Exception:  # a model that cannot say: export the pooled features only
        return False


def _WithMap(model):  # noqa: N802 - torch module classes are made on first use (no torch at import)
    import torch

    class WithMap(torch.nn.Module):
        """(pooled features, the map before pooling) of a timm model."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            feature_map = self.model.forward_features(x)
            return self.model.forward_head(feature_map), feature_map

    return WithMap(model).eval()


def pixels_model(model: "torch.nn.Module", mean, std) -> "torch.nn.Module":
    """``model`` behind ``PixelPipeline.to_tensor``'s arithmetic: uint8 (N, H, W, 3) in, the model's output out.
    (The class is made here, so that importing this module does not import torch.)"""
    import torch

    class PixelsToFeatures(torch.nn.Module):

        def __init__(self, model, mean, std):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            return self.model((x - self.mean) / self.std)

    return PixelsToFeatures(model, mean, std).eval()


def check_pixels(size: int) -> np.ndarray:
    """(4, size, size, 3) uint8 check images: seeded noise, colour gradients, blocks, and a dark smooth one."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    ramp = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), (xx + yy) * 255 // (2 * size - 2)], -1)
    blocks = np.stack([((xx // 16 + yy // 16) % 2) * 180 + 40, (yy // 32 % 3) * 90 + 20, xx // 4 % 256], -1)
    dark = np.clip(40 + 30 * np.sin(xx / 9.0)[..., None] + 20 * np.cos(yy / 13.0)[..., None] * [1, 0.5, 0.2], 0, 255)
    return np.stack([noise, ramp, blocks, dark]).astype(np.uint8)


def bf16_check_pixels(data_config: dict) -> np.ndarray:
    """(``BF16_CHECK_PHOTOS``, size, size, 3) uint8: real leaf photos of the demo set, every class, as the model
    sees them (the synthetic ``check_pixels`` when the demo set is not there, which bf16 does not pass)."""
    from toptune_core.backbones.pixels import PixelPipeline
    from toptune_core.config import DEMO_DATASET

    photos = sorted(DEMO_DATASET.glob("*/*.jpg"))
    if len(photos) < BF16_CHECK_PHOTOS:
        return check_pixels(int(data_config["input_size"][-1]))
    step = len(photos) // BF16_CHECK_PHOTOS
    pipeline = PixelPipeline(data_config)
    return np.stack([pipeline.eval_pixels(str(p)) for p in photos[::step][:BF16_CHECK_PHOTOS]])


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row cosine similarity of two (N, dim) feature arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def torch_features(model, data_config: dict, pixels: np.ndarray) -> np.ndarray:
    """The reference: PyTorch's features of ``pixels`` (a CPU model, fp32, ``PixelPipeline.to_tensor``)."""
    import torch

    from toptune_core.backbones.pixels import PixelPipeline

    with torch.inference_mode():
        return model(PixelPipeline(data_config).to_tensor(pixels, torch.device("cpu"))).float().numpy()


def _run_check(path: Path, engine: str, precision: str, pixels: np.ndarray, reference: np.ndarray
               ) -> list[np.ndarray]:
    """``engine``'s features of ``pixels`` on the graph, in one batch, and of the first alone."""
    try:
        runner = open_graph_engine(engine, path, precision=precision)
        got = [runner.run(pixels), runner.run(pixels[:1])]
    except Exception as e:  # a damaged or foreign file: the engine refuses it
        raise GraphError(f"{LABELS[engine]} cannot run the exported graph ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from None
    if got[0].shape != reference.shape or got[1].shape != reference[:1].shape:
        raise GraphError(f"the exported graph gives features of shape {got[0].shape}, PyTorch {reference.shape}")
    return got


def check_graph(path: Path, engine: str, model, data_config: dict) -> float:
    """Largest absolute difference between ``engine`` on the graph (f32) and PyTorch, on the check images in a
    batch of 4 and alone; ``GraphError`` when it exceeds ``TOLERANCE`` or the graph cannot be run."""
    pixels = check_pixels(int(data_config["input_size"][-1]))
    reference = torch_features(model, data_config, pixels)
    got = _run_check(path, engine, "f32", pixels, reference)
    diff = float(max(np.abs(got[0] - reference).max(), np.abs(got[1] - reference[:1]).max()))
    if not diff <= TOLERANCE:
        raise GraphError(f"{LABELS[engine]}'s features on the exported graph differ from PyTorch's by {diff:.2g} "
                         f"(limit {TOLERANCE:g})")
    return diff


def check_graph_bf16(path: Path, engine: str, model, data_config: dict) -> dict:
    """``engine`` in bf16 on the graph against PyTorch's f32 features of real leaf photos (``bf16_check_pixels``),
    in one batch and the first alone: ``{"min_cosine", "mean_cosine", "max_abs"}``; ``GraphError`` when a photo's
    cosine similarity is below ``BF16_MIN_COSINE`` or their mean below ``BF16_MEAN_COSINE``."""
    pixels = bf16_check_pixels(data_config)
    reference = torch_features(model, data_config, pixels)
    got = _run_check(path, engine, "bf16", pixels, reference)
    cosines = np.concatenate([cosine_similarities(got[0], reference), cosine_similarities(got[1], reference[:1])])
    result = {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
              "max_abs": float(max(np.abs(got[0] - reference).max(), np.abs(got[1] - reference[:1]).max()))}
    if not (result["min_cosine"] >= BF16_MIN_COSINE and result["mean_cosine"] >= BF16_MEAN_COSINE):
        raise GraphError(f"{LABELS[engine]}'s bf16 features on the exported graph are too far from PyTorch's f32 "
                         f"(cosine similarity {result['mean_cosine']:.4f} on average, {result['min_cosine']:.4f} at "
                         f"the lowest; limits {BF16_MEAN_COSINE:g} and {BF16_MIN_COSINE:g})")
    return result
