"""Feature extraction with a frozen backbone, and the on-disk feature cache.

``FeatureExtractor`` turns photos into pooled backbone features: photos are
decoded and preprocessed in background threads while the model runs on the
previous batch, under ``torch.inference_mode()``, channels-last. Only a couple
of batches of decoded images are held at a time, so memory stays flat however
large the dataset.

``FeatureCache`` keeps one entry per (dataset fingerprint, backbone, weights,
preprocessing, timm version). Entries are written to a temporary folder and
renamed into place, so an interrupted extraction never leaves an entry that
reads as complete; a lock file makes two sessions extracting the same entry
do the work once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from .backbones import DEFAULT_BACKBONE, create_model, get_backbone
from .data import Dataset
from .errors import ImageError, ToptuneError
from .images import ImageSource, load_rgb
from .progress import CancelCheck, ProgressCallback, ProgressMeter
from .settings import toptune_home

if TYPE_CHECKING:  # torch and timm load only when a model must run: a cache hit never imports them
    import torch


def pick_device(device: Optional[str] = None) -> "torch.device":
    """``device`` if given, else CUDA when present, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def timm_version() -> str:
    return importlib.metadata.version("timm")


def eval_data_config(backbone: str) -> dict:
    """timm's resolved evaluation preprocessing for ``backbone``, without building the model.

    Remembered on disk per timm version, so that a run whose features are cached
    need not import timm (and torch) at all.
    """
    remembered = toptune_home() / "data_configs" / f"{backbone}--timm-{timm_version()}.json"
    try:
        return json.loads(remembered.read_text())
    except (OSError, ValueError):
        pass
    import timm
    import timm.data

    spec = get_backbone(backbone)
    pretrained_cfg = timm.models.get_pretrained_cfg(spec.name)
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)
    if not pretrained_cfg:
        cfg["input_size"] = (3, spec.input_size, spec.input_size)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    remembered.parent.mkdir(parents=True, exist_ok=True)
    tmp = remembered.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(cfg))
    os.replace(tmp, remembered)
    return cfg


def eval_transform(cfg: dict):
    """timm's evaluation transform for a data config: resize, centre crop, to tensor, normalise. No augmentation."""
    import timm.data

    return timm.data.create_transform(input_size=tuple(cfg["input_size"]), interpolation=cfg["interpolation"],
                                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=cfg["crop_pct"],
                                      crop_mode=cfg.get("crop_mode", "center"), is_training=False)


def resize_side(cfg: dict) -> int:
    """The shorter-side length the eval transform resizes to before cropping."""
    return math.floor(cfg["input_size"][-1] / cfg["crop_pct"])


@dataclass
class ExtractionResult:
    """Features of the readable photos; ``ok[i]`` says whether photo i was readable."""

    features: np.ndarray  # (n_ok, feature_dim) float32
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[int, str]]  # (index, plain-word reason) of unreadable photos
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return float(self.ok.sum()) / self.seconds if self.seconds else float("nan")


class FeatureExtractor:
    """A frozen pretrained backbone used as a feature extractor.

    Parameters are the backbone's timm name, the batch size, the number of
    decoding threads, the device (default: CUDA when present, else CPU) and
    whether to use channels-last memory layout. The model is loaded on first
    use, so a cache hit never loads it.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, batch_size: int = 32, decode_workers: int = 2,
                 device: Optional[str] = None, channels_last: bool = True, draft: bool = True):
        self.backbone = backbone
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.device = device
        self.channels_last = channels_last
        self.draft = draft
        self.spec = get_backbone(backbone)
        self.data_config = eval_data_config(backbone)
        self._transform = None
        self._model: Optional["torch.nn.Module"] = None

    @property
    def model(self) -> "torch.nn.Module":
        import torch

        if self._model is None:
            model = create_model(self.backbone, num_classes=0)
            model = model.to(pick_device(self.device))
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._model = model
        return self._model

    @property
    def cache_identity(self) -> dict:
        """Everything that determines the features, for the cache key."""
        return {"backbone": self.spec.name, "weights": self.spec.weights_id, "data_config": self.data_config,
                "timm": timm_version()}

    def preprocess(self, source: ImageSource) -> "torch.Tensor":
        """One photo as the model's normalised input tensor (3, H, W)."""
        if self._transform is None:
            self._transform = eval_transform(self.data_config)
        min_size = resize_side(self.data_config) if self.draft else None
        return self._transform(load_rgb(source, min_size=min_size))

    def _preprocess_safe(self, source: ImageSource):
        try:
            return self.preprocess(source)
        except ImageError as e:
            return e
        except Exception as e:  # a decoder bug must not kill a whole dataset run
            return ImageError(f"'{Path(str(source)).name}' could not be read ({type(e).__name__}: {e}).")

    def features_of(self, batch: "torch.Tensor") -> np.ndarray:
        """Run the backbone on a preprocessed batch (N, 3, H, W); returns (N, feature_dim) float32."""
        import torch

        model = self.model
        device = next(model.parameters()).device
        with torch.inference_mode():
            batch = batch.to(device, non_blocking=True)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = model(batch)
            else:
                out = model(batch)
            return out.float().cpu().numpy()

    def transform(self, sources: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None) -> ExtractionResult:
        """Features of every readable photo in ``sources``; unreadable ones are reported, not fatal."""
        import torch

        n = len(sources)
        meter = ProgressMeter("extract", n, progress, "images", should_cancel)
        start = time.perf_counter()
        chunks, ok, errors = [], np.zeros(n, dtype=bool), []
        batches = [range(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        meter.update(0, "loading the model" if self._model is None else "")
        _ = self.model
        done = 0
        with ThreadPoolExecutor(max_workers=max(1, self.decode_workers), thread_name_prefix="decode") as pool:
            pending: deque = deque()

            def submit(b: range):
                pending.append((b, [pool.submit(self._preprocess_safe, sources[i]) for i in b]))

            for b in batches[:2]:  # keep at most two batches decoding ahead of the model
                submit(b)
            next_batch = 2
            while pending:
                b, futures = pending.popleft()
                tensors = []
                for i, fut in zip(b, futures):
                    result = fut.result()
                    if isinstance(result, ImageError):
                        errors.append((i, str(result)))
                    else:
                        ok[i] = True
                        tensors.append(result)
                if next_batch < len(batches):
                    submit(batches[next_batch])
                    next_batch += 1
                if tensors:
                    chunks.append(self.features_of(torch.stack(tensors)))
                done += len(b)
                try:
                    meter.update(done)
                except BaseException:
                    for _, futs in pending:
                        for f in futs:
                            f.cancel()
                    raise
        dim = chunks[0].shape[1] if chunks else self.spec.feature_dim
        features = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
        return ExtractionResult(features, ok, errors, time.perf_counter() - start)


# --- the on-disk cache ------------------------------------------------------------------------------

@dataclass
class CachedFeatures:
    """A cache entry: features of the readable photos of one dataset with one backbone."""

    key: str
    features: np.ndarray  # (n_ok, dim)
    relpaths: list[str]  # all photos of the dataset, in dataset order
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[str, str]]  # (relpath, reason) of unreadable photos
    extract_seconds: float  # how long the extraction took when it was made
    meta: dict = field(default_factory=dict)

    def full_matrix(self) -> np.ndarray:
        """(n, dim) features in dataset order, NaN rows for unreadable photos."""
        out = np.full((len(self.relpaths), self.features.shape[1]), np.nan, dtype=np.float32)
        out[self.ok] = self.features
        return out


class FeatureCache:
    """Features on disk under ``root`` (default ``$TOPTUNE_HOME/features``), one folder per key."""

    def __init__(self, root: Optional[str | Path] = None):
        self.root = Path(root) if root else toptune_home() / "features"
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(fingerprint: str, identity: dict) -> str:
        blob = json.dumps({"dataset": fingerprint, **identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Optional[CachedFeatures]:
        """The complete entry for ``key``, or None. A damaged entry is discarded, never returned."""
        entry = self.path(key)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            features = np.load(entry / "features.npy", allow_pickle=False)
            ok = np.asarray(meta["ok"], dtype=bool)
            if features.shape[0] != int(ok.sum()) or len(meta["relpaths"]) != len(ok):
                raise ValueError("inconsistent entry")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return CachedFeatures(key, features, meta["relpaths"], ok, [tuple(e) for e in meta["errors"]],
                              meta["extract_seconds"], meta)

    def save(self, key: str, result: ExtractionResult, relpaths: list[str], meta: dict) -> CachedFeatures:
        """Write an entry atomically: to a temporary folder, then one rename."""
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            np.save(tmp / "features.npy", result.features.astype(np.float32), allow_pickle=False)
            record = {**meta, "relpaths": relpaths, "ok": result.ok.tolist(),
                      "errors": [(relpaths[i], reason) for i, reason in result.errors],
                      "extract_seconds": result.seconds, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(record))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, self.path(key))
            except OSError:  # another process finished the same entry first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = self.load(key)
        if entry is None:
            raise ToptuneError("The feature cache could not be written; check free disk space in "
                               f"'{self.root}'.")
        return entry

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` across processes (fcntl)."""
        with open(self.root / f".{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def clean_stale_temporaries(self, older_than_s: float = 3600) -> int:
        """Remove leftovers of interrupted writes; returns how many were removed."""
        removed = 0
        for p in self.root.glob(".tmp-*"):
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed


@dataclass
class FeatureSet:
    """What a run gets: the cache entry, and whether it came from the cache."""

    entry: CachedFeatures
    cache_hit: bool
    seconds: float  # time spent getting the features in this call


def get_features(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache, *,
                 progress: Optional[ProgressCallback] = None,
                 should_cancel: Optional[CancelCheck] = None) -> FeatureSet:
    """Features for every photo of ``dataset``: from the cache when present, else extracted and cached."""
    start = time.perf_counter()
    key = cache.key(dataset.fingerprint(), extractor.cache_identity)
    entry = cache.load(key)
    if entry is None:
        with cache.lock(key):
            entry = cache.load(key)  # someone else may have made it while we waited
            if entry is None:
                result = extractor.transform(dataset.paths, progress=progress, should_cancel=should_cancel)
                if not result.ok.any():
                    raise ToptuneError(f"None of the {len(dataset)} photos could be read; the first problem: "
                                       f"{result.errors[0][1] if result.errors else 'unknown'}")
                entry = cache.save(key, result, dataset.relpaths,
                                   {**extractor.cache_identity, "dataset_root": str(dataset.root)})
                return FeatureSet(entry, False, time.perf_counter() - start)
    return FeatureSet(entry, True, time.perf_counter() - start)
