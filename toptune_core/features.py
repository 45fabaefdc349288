"""Feature extraction with a frozen backbone, and the on-disk feature cache.

``FeatureExtractor`` turns photos into pooled backbone features. Photos are
decoded, resized and cropped to 8-bit pixels by Pillow and NumPy (JPEG draft
mode for large photos) and batches go through the model under
``torch.inference_mode()``, channels-last. On a CPU, one "lane" thread per
core decodes a batch and runs single-threaded torch on it, so one lane's
decoding overlaps the others' compute; on CUDA, decoding threads feed the GPU
(pinned memory, fp16 autocast). Only a few batches of pixels exist at a time,
so memory stays flat however large the dataset. ``python -m toptune_core
bench`` measures how close this comes to the model's own speed.

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
import threading
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
from .errors import Cancelled, ImageError, ToptuneError
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
    tmp = remembered.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp")
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, remembered)
    except OSError:  # remembering is only a shortcut: a full disk or read-only folder must not stop the work
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
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


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (which cpusets and taskset narrow), further capped by a
    cgroup CPU quota (``docker --cpus``, Kubernetes limits), which the mask does not show."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_cpu_quota() -> Optional[float]:
    """The cgroup CPU quota in CPUs (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


_threads_lock = threading.Lock()
_threads_users = 0
_threads_default = 0


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU operators on ``n`` intra-op threads inside the block, then restore the setting.

    torch's setting is also a process-wide default that threads started later
    inherit (the dashboard runs every page in a new thread), and an
    extraction's lanes change it; so the default from before the first of any
    overlapping blocks is what is restored, even when extractions in several
    threads overlap.
    """
    global _threads_users, _threads_default
    import torch

    with _threads_lock:
        if _threads_users == 0:
            _threads_default = torch.get_num_threads()
        _threads_users += 1
        default = _threads_default
    torch.set_num_threads(n)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
        torch.set_num_threads(default)


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


#: Default batch sizes (see ``FeatureExtractor.plan``).
CPU_BATCH_SIZE = 4
CUDA_BATCH_SIZE = 64
#: Most CPU lanes; on bigger machines each lane gets several torch threads instead.
MAX_LANES = 8


@dataclass(frozen=True)
class ExtractionPlan:
    """How an extraction runs.

    ``lanes`` > 1 (CPU): that many threads each decode a batch and run the
    model on it with ``threads`` torch threads of their own. ``lanes`` == 1:
    ``decode_workers`` threads decode ahead while the calling thread runs the
    model (with ``threads`` torch threads on a CPU; 0 leaves torch's setting).
    """

    device: str
    batch_size: int
    lanes: int
    threads: int
    decode_workers: int

    def describe(self) -> str:
        if self.lanes > 1:
            return (f"{self.device}, {self.lanes} lanes (decode + model) of {self.threads} torch thread(s), "
                    f"batch {self.batch_size}")
        threads = f"{self.threads} torch thread(s), " if self.threads else ""
        return f"{self.device}, batch {self.batch_size}, {threads}{self.decode_workers} decoding thread(s)"


@dataclass
class PixelBatch:
    """Decoded, resized and cropped photos of one batch as 8-bit pixels, ready for the model."""

    indices: range  # positions of the batch's photos in the sources
    pixels: np.ndarray  # (n_ok, H, W, 3) uint8, readable photos only, in order
    ok: list[bool]  # per photo of the batch
    errors: list[tuple[int, str]]  # (index in sources, reason)
    features: Optional[np.ndarray] = None  # (n_ok, dim) once the model has run


class FeatureExtractor:
    """A frozen pretrained backbone used as a feature extractor.

    Parameters: the backbone's timm name; ``batch_size``; ``lanes``,
    ``threads`` and ``decode_workers``, how the CPUs are used (each None:
    chosen for this machine, see ``plan``); the device (default: CUDA when
    present, else CPU); channels-last memory layout; and ``draft``, JPEG
    draft-mode decoding of photos at least twice the size the model needs.
    The model is loaded on first use, so a cache hit never loads it (nor
    imports torch).

    The hot path (``transform``): photos are decoded, resized and cropped to
    8-bit pixels by Pillow and NumPy, in threads that run no torch operator
    until the pixels are ready; a batch then becomes a normalised
    channels-last float tensor in one step (exactly timm's ToTensor +
    Normalize arithmetic) and goes through the model under
    ``inference_mode``. On a CPU, ``lanes`` threads each decode and run their
    own batches with single-threaded torch, so decoding in one lane overlaps
    the model in the others and no core waits at an OpenMP barrier. On CUDA
    decoding threads work ahead of the GPU; the 8-bit batch goes through
    pinned memory, is normalised on the GPU and runs under fp16 autocast.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, batch_size: Optional[int] = None,
                 decode_workers: Optional[int] = None, device: Optional[str] = None, channels_last: bool = True,
                 draft: bool = True, threads: Optional[int] = None, lanes: Optional[int] = None):
        self.backbone = backbone
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.threads = threads
        self.lanes = lanes
        self.device = device
        self.channels_last = channels_last
        self.draft = draft
        self.spec = get_backbone(backbone)
        self.data_config = eval_data_config(backbone)
        self._transform = None
        self._pixel_steps = None
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

    def plan(self) -> ExtractionPlan:
        """How an extraction uses this machine. Explicit constructor settings win; otherwise:

        * CPU: one lane per CPU this process may use (``available_cpus``: the
          affinity mask and any cgroup CPU quota, not the host's cores), up to
          ``MAX_LANES``, each with ``cpus // lanes`` torch threads - so one
          single-threaded lane per core on small machines. A lane decodes its
          batch (about 1 ms a 256-px photo, 25-50 ms a 12-MP camera JPEG in
          draft mode) and runs the model on it (about 25 ms a photo for
          EfficientNet-Lite0 on one core of the reference machine); the
          lanes' phases interleave, so every core is always computing and
          none waits at an OpenMP barrier for a core that is decoding - which
          is what one multi-threaded model plus decoding threads did: on 2
          CPUs, decoding threads took turns with torch's threads and the
          extraction ran at less than half the model's speed. Batches of
          ``CPU_BATCH_SIZE``: small batches keep the activations in cache and
          ran fastest on the reference machine (the bench prints the ceiling
          per batch size).
        * CUDA: the GPU computes; every CPU but the one feeding it decodes,
          ``CUDA_BATCH_SIZE`` photos a batch.
        """
        cpus = available_cpus()
        on_cuda = (pick_device(self.device).type == "cuda" if self._model is None
                   else next(self._model.parameters()).device.type == "cuda")
        if on_cuda:
            return ExtractionPlan("cuda", self.batch_size or CUDA_BATCH_SIZE, 1, self.threads or 0,
                                  self.decode_workers if self.decode_workers is not None else max(1, cpus - 1))
        lanes = self.lanes or min(cpus, MAX_LANES)
        threads = self.threads or max(1, cpus // lanes)
        # (with a single CPU, lanes == 1 and decoding in the model's thread avoids pointless switching)
        decode = self.decode_workers if self.decode_workers is not None else (1 if cpus > 1 else 0)
        return ExtractionPlan("cpu", self.batch_size or CPU_BATCH_SIZE, lanes, threads, decode)

    # --- preprocessing -------------------------------------------------------------------------------

    def _eval_transform(self):
        if self._transform is None:
            self._transform = eval_transform(self.data_config)
        return self._transform

    def _split_transform(self):
        """timm's eval transform split into its Pillow steps (resize, crop) and its tensor arithmetic.

        Returns (pixel steps, mean, std), or None if the transform has a step this
        fast path does not reproduce exactly (then photos go through the plain transform).
        """
        if self._pixel_steps is None:
            from torchvision import transforms as T

            steps = list(getattr(self._eval_transform(), "transforms", []))
            names = [type(t).__name__ for t in steps]
            split = None
            if len(steps) >= 2 and names[-2] in ("ToTensor", "MaybeToTensor") and names[-1] == "Normalize" \
                    and not any(n in ("ToTensor", "MaybeToTensor", "Normalize") for n in names[:-2]):
                norm = steps[-1]
                split = (T.Compose(steps[:-2]), [float(v) for v in norm.mean], [float(v) for v in norm.std])
            self._pixel_steps = split or False
        return self._pixel_steps or None

    def load_pixels(self, source: ImageSource) -> np.ndarray:
        """One photo decoded, resized and cropped as the model sees it: (H, W, 3) uint8. Pillow and NumPy only.

        With ``draft``, a JPEG at least twice the resize side is decoded at a
        power-of-two reduction that keeps its shorter side at or above the
        resize side (``images.load_rgb(min_size=...)``), so the resize that
        follows only ever shrinks: the crop differs from a full decode's by
        resampling error only.
        """
        split = self._split_transform()
        if split is None:
            raise RuntimeError("this backbone's eval transform has no 8-bit pixel stage")
        min_size = resize_side(self.data_config) if self.draft else None
        im = split[0](load_rgb(source, min_size=min_size))
        return np.array(im, dtype=np.uint8)  # a writable copy (150 KB), which torch.from_numpy can share

    def pixels_to_tensor(self, pixels: "np.ndarray | torch.Tensor", device: Optional["torch.device"] = None
                         ) -> "torch.Tensor":
        """(N, H, W, 3) uint8 pixels -> normalised float (N, 3, H, W) on ``device`` (channels-last if enabled).

        The arithmetic is timm's ToTensor + Normalize, operator for operator
        (x / 255, then (x - mean) / std in float32), so the result is bitwise
        the plain transform's. On CUDA the 8 bits travel (pinned, asynchronously)
        and the arithmetic runs on the GPU.
        """
        import torch

        split = self._split_transform()
        x = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
        if device is not None and device.type == "cuda":
            if not x.is_pinned():
                x = x.pin_memory()
            x = x.to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # an NCHW view of NHWC memory: already channels-last
        if not self.channels_last:
            x = x.contiguous()
        x = x.to(torch.float32).div_(255)
        mean = torch.tensor(split[1], dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(split[2], dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def preprocess(self, source: ImageSource) -> "torch.Tensor":
        """One photo as the model's normalised input tensor (3, H, W)."""
        if self._split_transform() is None:
            min_size = resize_side(self.data_config) if self.draft else None
            return self._eval_transform()(load_rgb(source, min_size=min_size))
        return self.pixels_to_tensor(self.load_pixels(source)[None])[0].contiguous()

    def _load_batch(self, sources: Sequence[ImageSource], indices: range) -> PixelBatch:
        """Decode one batch (Pillow and NumPy only). Unreadable photos are reported, not fatal."""
        size = tuple(self.data_config["input_size"][-2:])
        pixels = np.empty((len(indices), *size, 3), dtype=np.uint8)
        ok, errors, n_ok = [], [], 0
        for i in indices:
            try:
                arr = self.load_pixels(sources[i])
                if arr.shape != pixels.shape[1:]:
                    raise ValueError(f"preprocessing gave {arr.shape}, not {pixels.shape[1:]}")
                pixels[n_ok] = arr
                n_ok += 1
                ok.append(True)
            except ImageError as e:
                ok.append(False)
                errors.append((i, str(e)))
            except Exception as e:  # a decoder bug must not kill a whole dataset run
                ok.append(False)
                errors.append((i, _unreadable(sources[i], e)))
        return PixelBatch(indices, pixels[:n_ok], ok, errors)

    # --- the model -----------------------------------------------------------------------------------

    def features_of(self, batch: "torch.Tensor") -> np.ndarray:
        """Run the backbone on a preprocessed batch (N, 3, H, W); returns (N, feature_dim) float32.

        On a CPU this runs on one lane's torch threads (``plan().threads``: one
        on machines with up to 8 CPUs), which is what a single photo's
        prediction wants: a model spread over several OpenMP threads waits at
        every operator for its slowest thread, so when anything else runs on
        the machine (another user's extraction in the dashboard, another
        program) a 2-thread prediction took 600-850 ms on the reference
        machine against 35-100 ms on one thread.
        """
        import torch

        model = self.model
        device = next(model.parameters()).device
        with self._lane_threads(device), torch.inference_mode():
            if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
                batch = batch.pin_memory()
            return self._run(model, batch.to(device, non_blocking=True), device)

    def features_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Features of a (N, H, W, 3) uint8 batch from ``load_pixels``; (N, feature_dim) float32.
        Threads as in ``features_of``."""
        device = next(self.model.parameters()).device
        with self._lane_threads(device):
            return self._features_of_pixels(pixels)

    def _features_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        model = self.model
        device = next(model.parameters()).device
        with torch.inference_mode():
            return self._run(model, self.pixels_to_tensor(pixels, device), device)

    def _lane_threads(self, device: "torch.device"):
        return torch_threads(self.plan().threads) if device.type == "cpu" else _nothing()

    def _run(self, model, batch: "torch.Tensor", device: "torch.device") -> np.ndarray:
        import torch

        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(batch)
        else:
            out = model(batch)
        return out.float().cpu().numpy()

    # --- the pipeline --------------------------------------------------------------------------------

    def transform(self, sources: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None) -> ExtractionResult:
        """Features of every readable photo in ``sources``; unreadable ones are reported, not fatal.

        Photos stream through: a bounded number of batches (``lanes`` + 1, or
        ``decode_workers`` + 2) exist as pixels at any time, so memory does not
        grow with the number of photos; only the features (5 KB a photo) do.
        """
        n = len(sources)
        meter = ProgressMeter("extract", n, progress, "images", should_cancel)
        start = time.perf_counter()
        meter.update(0, "loading the model" if self._model is None else "")
        _ = self.model
        plan = self.plan()
        bs = plan.batch_size
        batches = [range(i, min(i + bs, n)) for i in range(0, n, bs)]
        if self._split_transform() is None:
            stream = self._plain_batches(sources, batches)
        elif plan.lanes > 1:
            stream = self._lane_batches(sources, batches, plan)
        else:
            stream = self._pooled_batches(sources, batches, plan)
        chunks, ok, errors = [], np.zeros(n, dtype=bool), []
        with (torch_threads(plan.threads) if plan.threads else _nothing()):
            try:
                for batch in stream:
                    ok[batch.indices.start:batch.indices.stop] = batch.ok
                    errors.extend(batch.errors)
                    if batch.features is not None:
                        chunks.append(batch.features)
                    meter.update(batch.indices.stop)
            finally:
                stream.close()  # on cancel or error: stops and joins the threads
        dim = chunks[0].shape[1] if chunks else self.spec.feature_dim
        features = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
        return ExtractionResult(features, ok, errors, time.perf_counter() - start)

    def _with_features(self, batch: PixelBatch) -> PixelBatch:
        if len(batch.pixels):
            batch.features = self._features_of_pixels(batch.pixels)  # on the threads transform() set up
        batch.pixels = batch.pixels[:0]  # the pixels are no longer needed
        return batch

    def _lane_batches(self, sources, batches: list[range], plan: ExtractionPlan) -> Iterator[PixelBatch]:
        """CPU: ``plan.lanes`` threads each take the next batch, decode it and run the model on it.

        Finished batches are handed on in order; a lane does not start a batch
        more than ``lanes + 1`` ahead of the last one handed on, which bounds memory.
        """
        import torch

        done: dict[int, object] = {}
        state = {"next": 0, "handed": 0, "stop": False}
        cond = threading.Condition()
        window = plan.lanes + 1

        def lane() -> None:
            torch.set_num_threads(plan.threads)  # this thread's own OpenMP team
            while True:
                with cond:
                    while not state["stop"] and state["next"] < len(batches) \
                            and state["next"] >= state["handed"] + window:
                        cond.wait()
                    if state["stop"] or state["next"] >= len(batches):
                        return
                    k = state["next"]
                    state["next"] += 1
                try:
                    result: object = self._with_features(self._load_batch(sources, batches[k]))
                except BaseException as e:  # handed to the caller in order
                    result = e
                with cond:
                    done[k] = result
                    cond.notify_all()

        workers = [threading.Thread(target=lane, name=f"extract-lane-{j}", daemon=True) for j in range(plan.lanes)]
        for w in workers:
            w.start()
        try:
            for k in range(len(batches)):
                with cond:
                    while k not in done:
                        cond.wait()
                    result = done.pop(k)
                    state["handed"] = k + 1
                    cond.notify_all()
                if isinstance(result, BaseException):
                    raise result
                yield result
        finally:
            with cond:
                state["stop"] = True
                cond.notify_all()
            for w in workers:
                w.join()

    def _pooled_batches(self, sources, batches: list[range], plan: ExtractionPlan) -> Iterator[PixelBatch]:
        """``plan.decode_workers`` threads decode ahead (at most that + 1 batches queued) while this
        thread runs the model; with 0 workers, batches are decoded here, one at a time."""
        if plan.decode_workers <= 0:
            for b in batches:
                yield self._with_features(self._load_batch(sources, b))
            return
        pool = ThreadPoolExecutor(max_workers=plan.decode_workers, thread_name_prefix="decode")
        try:
            ahead = plan.decode_workers + 1
            pending: deque = deque(pool.submit(self._load_batch, sources, b) for b in batches[:ahead])
            next_batch = len(pending)
            while pending:
                batch = pending.popleft().result()
                if next_batch < len(batches):  # keep the decoders busy while the model runs
                    pending.append(pool.submit(self._load_batch, sources, batches[next_batch]))
                    next_batch += 1
                yield self._with_features(batch)
        finally:  # also on cancel: queued batches are dropped, a running one is waited for
            pool.shutdown(wait=True, cancel_futures=True)

    def _plain_batches(self, sources, batches: list[range]) -> Iterator[PixelBatch]:
        """Fallback for an eval transform without a pixel stage: timm's transform per photo, here."""
        import torch

        for b in batches:
            tensors, ok, errors = [], [], []
            for i in b:
                try:
                    tensors.append(self.preprocess(sources[i]))
                    ok.append(True)
                except ImageError as e:
                    ok.append(False)
                    errors.append((i, str(e)))
                except Exception as e:
                    ok.append(False)
                    errors.append((i, _unreadable(sources[i], e)))
            feats = self.features_of(torch.stack(tensors)) if tensors else None
            yield PixelBatch(b, np.zeros((0, 0, 0, 3), dtype=np.uint8), ok, errors, feats)


def _unreadable(source: ImageSource, e: Exception) -> str:
    return f"'{Path(str(source)).name}' could not be read ({type(e).__name__}: {e})."


@contextmanager
def _nothing() -> Iterator[None]:
    yield


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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cache_error(self.root, e) from None

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
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise _cache_error(self.root, e) from None
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
        except OSError as e:  # disk full, read-only: nothing half-written is left
            shutil.rmtree(tmp, ignore_errors=True)
            raise _cache_error(self.root, e) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = self.load(key)
        if entry is None:
            raise ToptuneError("The feature cache could not be written; check free disk space in "
                               f"'{self.root}'.")
        return entry

    @contextmanager
    def lock(self, key: str, should_cancel: Optional[CancelCheck] = None) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` across processes (fcntl); waiting for it can be cancelled."""
        try:
            fh = open(self.root / f".{key}.lock", "w")
        except OSError as e:
            raise _cache_error(self.root, e) from None
        with fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # another session is extracting the same features: wait for it
                    if should_cancel is not None and should_cancel():
                        raise Cancelled("Feature extraction was cancelled (while waiting for another session "
                                        "extracting the same features).") from None
                    time.sleep(0.1)
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


def _cache_error(root: Path, e: OSError) -> ToptuneError:
    return ToptuneError(f"Could not write the feature cache in '{root}' ({e.strerror or e}); free some disk space "
                        "or make the data folder writable (TOPTUNE_HOME). Nothing half-written was kept.")


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
        with cache.lock(key, should_cancel):
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
