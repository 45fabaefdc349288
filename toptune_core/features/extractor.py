"""Feature extraction with a frozen backbone.

``FeatureExtractor`` turns photos into pooled backbone features. Photos are
decoded, resized and cropped to 8-bit pixels by Pillow and NumPy (JPEG draft
mode for large photos) and batches go through the model under
``torch.inference_mode()``, channels-last. On a CPU, one "lane" thread per
core decodes a batch and runs single-threaded torch on it, so one lane's
decoding overlaps the others' compute; on CUDA, decoding threads feed the GPU
(pinned memory, fp16 autocast). Only a few batches of pixels exist at a time,
so memory stays flat however large the dataset. ``python -m toptune_core
bench`` measures how close this comes to the model's own speed.

Pixels come from the one pixel pipeline (``backbones.pixels``), the CPU
split from the one thread policy (``system.thread_policy``) and decoding
ahead from the one reader (``features.reader``). The cache is ``features.cache``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, create_model, get_backbone
from toptune_core.backbones.pixels import PixelBatch, PixelPipeline, eval_data_config, timm_version, \
    unreadable_reason
from toptune_core.config import Settings
from toptune_core.data.images import ImageSource
from toptune_core.features.reader import chunked, read_ahead
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.system import nothing, thread_policy, torch_threads

if TYPE_CHECKING:  # torch and timm load only when a model must run: a cache hit never imports them
    import torch


def pick_device(device: Optional[str] = None) -> "torch.device":
    """``device`` if given, else CUDA when present, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class FeatureExtractor:
    """A frozen pretrained backbone used as a feature extractor.

    Parameters: the backbone's timm name; ``batch_size``; ``lanes``,
    ``threads`` and ``decode_workers``, how the CPUs are used (each None:
    chosen for this machine, see ``plan``); the device (default: CUDA when
    present, else CPU); channels-last memory layout; and ``draft``, JPEG
    draft-mode decoding of photos at least twice the size the model needs;
    ``data_config``, timm's resolved preprocessing when the caller already has
    it (a cluster worker gets the driver's), else resolved here. The model is loaded on first use, so a cache hit never loads it (nor
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
                 draft: bool = True, threads: Optional[int] = None, lanes: Optional[int] = None,
                 settings: Optional[Settings] = None, data_config: Optional[dict] = None):
        self.backbone = backbone
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.threads = threads
        self.lanes = lanes
        self.device = device
        self.channels_last = channels_last
        self.draft = draft
        self.spec = get_backbone(backbone)
        self.data_config = data_config or eval_data_config(backbone, settings)
        self.pixels = PixelPipeline(self.data_config, draft=draft)
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

        * CPU: one lane per CPU this process may use (``system.thread_policy``: the
          affinity mask and any cgroup CPU quota, not the host's cores), up to
          ``system.MAX_LANES``, each with ``cpus // lanes`` torch threads - so one
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
        policy = thread_policy()
        cpus = policy.cpus
        on_cuda = (pick_device(self.device).type == "cuda" if self._model is None
                   else next(self._model.parameters()).device.type == "cuda")
        if on_cuda:
            return ExtractionPlan("cuda", self.batch_size or CUDA_BATCH_SIZE, 1, self.threads or 0,
                                  self.decode_workers if self.decode_workers is not None else max(1, cpus - 1))
        lanes = self.lanes or policy.lanes
        threads = self.threads or (policy.lane_threads if lanes == policy.lanes else max(1, cpus // lanes))
        # (with a single CPU, lanes == 1 and decoding in the model's thread avoids pointless switching)
        decode = self.decode_workers if self.decode_workers is not None else (1 if cpus > 1 else 0)
        return ExtractionPlan("cpu", self.batch_size or CPU_BATCH_SIZE, lanes, threads, decode)

    # --- preprocessing -------------------------------------------------------------------------------

    def load_pixels(self, source: ImageSource) -> np.ndarray:
        """One photo decoded, resized and cropped as the model sees it: (H, W, 3) uint8 (``PixelPipeline``)."""
        return self.pixels.eval_pixels(source)

    def pixels_to_tensor(self, pixels: "np.ndarray | torch.Tensor", device: Optional["torch.device"] = None
                         ) -> "torch.Tensor":
        """(N, H, W, 3) uint8 pixels -> normalised float (N, 3, H, W) on ``device`` (``PixelPipeline.to_tensor``)."""
        return self.pixels.to_tensor(pixels, device, self.channels_last)

    def preprocess(self, source: ImageSource) -> "torch.Tensor":
        """One photo as the model's normalised input tensor (3, H, W)."""
        if not self.pixels.has_pixel_stage:
            return self.pixels.plain_tensor(source)
        return self.pixels_to_tensor(self.load_pixels(source)[None])[0].contiguous()

    def _load_batch(self, sources: Sequence[ImageSource], indices: Sequence[int]) -> PixelBatch:
        """Decode one batch (Pillow and NumPy only). Unreadable photos are reported, not fatal."""
        return self.pixels.load_batch(sources, indices)

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
        return torch_threads(self.plan().threads) if device.type == "cpu" else nothing()

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
        batches = chunked(range(n), bs)
        if not self.pixels.has_pixel_stage:
            stream = self._plain_batches(sources, batches)
        elif plan.lanes > 1:
            stream = self._lane_batches(sources, batches, plan)
        else:
            stream = self._pooled_batches(sources, batches, plan)
        chunks, ok, errors = [], np.zeros(n, dtype=bool), []
        with (torch_threads(plan.threads) if plan.threads else nothing()):
            try:
                for batch in stream:
                    ok[batch.indices[0]:batch.indices[-1] + 1] = batch.ok
                    errors.extend(batch.errors)
                    if batch.features is not None:
                        chunks.append(batch.features)
                    meter.update(batch.indices[-1] + 1)
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

    def _lane_batches(self, sources, batches: list[list[int]], plan: ExtractionPlan) -> Iterator[PixelBatch]:
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

    def _pooled_batches(self, sources, batches: list[list[int]], plan: ExtractionPlan) -> Iterator[PixelBatch]:
        """``plan.decode_workers`` threads decode ahead (``features.reader``) while this thread runs the model."""
        for _, batch in read_ahead(batches, lambda b: self._load_batch(sources, b), plan.decode_workers):
            yield self._with_features(batch)

    def _plain_batches(self, sources, batches: list[list[int]]) -> Iterator[PixelBatch]:
        """Fallback for an eval transform without a pixel stage: timm's transform per photo, here."""
        import torch

        for b in batches:
            tensors, ok, errors = [], [], []
            for i in b:
                try:
                    tensors.append(self.preprocess(sources[i]))
                    ok.append(True)
                except Exception as e:
                    ok.append(False)
                    errors.append((i, unreadable_reason(sources[i], e)))
            feats = self.features_of(torch.stack(tensors)) if tensors else None
            yield PixelBatch(b, np.zeros((0, 0, 0, 3), dtype=np.uint8), ok, errors, feats)
