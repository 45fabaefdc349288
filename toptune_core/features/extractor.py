"""Feature extraction with a frozen backbone.

``FeatureExtractor`` turns photos into pooled backbone features. Photos are
decoded, resized and cropped to 8-bit pixels by Pillow and NumPy (JPEG draft
mode for large photos) and batches go through an inference engine
(``features.engines``): on a CPU by default OpenVINO in bf16 where the CPU
has bf16, else ONNX Runtime in f32, on the backbone's exported graph
(``features.graph``; built and checked against PyTorch once, then loaded
without torch), on CUDA the PyTorch model (pinned memory, fp16 autocast). The
precision is part of the feature cache's identity (``cache_identity``); a
bf16 engine that fails its check runs f32 instead and says so. If the graph cannot be built or fails its check, extraction falls
back to PyTorch and says so (``engine_note``, the progress line, the cache
entry and the run record). On a CPU, one "lane" thread per core decodes a
batch and runs the engine on it single-threaded, so one lane's decoding
overlaps the others' compute; on CUDA, decoding threads feed the GPU. Only a
few batches of pixels exist at a time, so memory stays flat however large the
dataset. ``python -m toptune_core bench`` measures how close this comes to
each engine's own speed.

Pixels come from the one pixel pipeline (``backbones.pixels``), the CPU
split from the one thread policy (``system.thread_policy``, through
``features.plan``), the stream of batches from ``features.stream`` and
decoding ahead from the one reader (``features.reader``); the engine is opened
by ``features.engine_loader``. The cache is ``features.cache``.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, DEFAULT_RESOLUTION, create_model, get_backbone
from toptune_core.backbones.pixels import PixelPipeline, eval_data_config, timm_version
from toptune_core.config import Settings
from toptune_core.data.images import ImageSource
from toptune_core.errors import ImageError, ToptuneError
from toptune_core.features import engine_loader, engines, views as view_sets
from toptune_core.features.plan import CPU_BATCH_SIZE, ExtractionPlan, ExtractionResult, plan_for  # noqa: F401
from toptune_core.features.stream import extract
from toptune_core.progress import CancelCheck, ProgressCallback
from toptune_core.system import cuda_present, nothing, torch_threads

if TYPE_CHECKING:  # torch and timm load only when a PyTorch model must run: a cache hit never imports them
    import torch


def pick_device(device: Optional[str] = None) -> "torch.device":
    """``device`` if given, else CUDA when present, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extractor_for(backbone: str, data_config: Optional[dict], views: str, extractor: Optional["FeatureExtractor"] = None,
                  settings: Optional[Settings] = None) -> "FeatureExtractor":
    """The extractor a saved model needs: ``backbone`` at the input size of its ``data_config``, with its view set;
    ``extractor`` (the dashboard's, for any settings of this backbone) is reused when it is for the same backbone.
    A ``data_config`` that this installation's timm resolves differently is a one-line error (the features would
    differ from the ones the model was trained on)."""
    if extractor is None or extractor.backbone != backbone:
        extractor = FeatureExtractor(backbone, settings=settings, views=views)
    if data_config is None:  # a run from before preprocessing was recorded
        return extractor.reconfigured(views=views)
    resolution = int(data_config["input_size"][-1])
    expected = eval_data_config(backbone, extractor.settings, resolution)
    if expected != data_config:
        raise ToptuneError(f"This model was trained with other preprocessing ({data_config}) than this installation's "
                           f"{backbone} uses at {resolution} px; train it again.")
    return extractor.reconfigured(views=views, data_config=data_config)


class FeatureExtractor:
    """A frozen pretrained backbone used as a feature extractor.

    Parameters: the backbone's timm name; ``batch_size``; ``lanes``,
    ``threads`` and ``decode_workers``, how the CPUs are used (each None:
    chosen for this machine, see ``plan``); the device (default: CUDA when
    present, else CPU); channels-last memory layout (PyTorch); ``draft``, JPEG
    draft-mode decoding of photos at least twice the size the model needs;
    ``engine``, the inference engine's name (``features.engines``; None:
    ``settings.engine``, by default "auto"); ``precision``, "auto", "f32" or
    "bf16" (None: ``settings.precision``; see ``engines.choose``); and ``data_config``, timm's data
    config when the caller has it (a Ray worker gets the driver's). Nothing is loaded until it is
    needed, so a cache hit loads no engine (nor imports torch), and a loaded
    ONNX Runtime engine never imports torch.

    The hot path (``transform``): photos are decoded, resized and cropped to
    8-bit pixels by Pillow and NumPy, in threads that hold no lock while they
    do; a batch of 8-bit pixels then goes to the engine, which normalises it
    (timm's ToTensor + Normalize arithmetic) and runs the backbone. On a CPU,
    ``lanes`` threads each decode and run their own batches single-threaded,
    so decoding in one lane overlaps the model in the others and no core
    waits at a barrier. On CUDA decoding threads work ahead of the GPU; the
    8-bit batch goes through pinned memory, is normalised on the GPU and runs
    under fp16 autocast.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, batch_size: Optional[int] = None,
                 decode_workers: Optional[int] = None, device: Optional[str] = None, channels_last: bool = True,
                 draft: bool = True, threads: Optional[int] = None, lanes: Optional[int] = None,
                 engine: Optional[str] = None, settings: Optional[Settings] = None, data_config: Optional[dict] = None,
                 views: Optional[str] = None, resolution: Optional[int] = None, precision: Optional[str] = None):
        self.backbone = backbone
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.threads = threads
        self.lanes = lanes
        self.device = device
        self.channels_last = channels_last
        self.draft = draft
        self.settings = settings or Settings.from_env()
        self.engine = engines.check_name(engine or self.settings.engine)
        self.precision = engines.check_precision(precision or self.settings.precision)  # asked for
        self.spec = get_backbone(backbone)
        self.views = view_sets.check_views(views or self.settings.views)
        self.first_view = 0  # views before this one are in the cache already (``reconfigured``)
        if resolution is None:
            resolution = DEFAULT_RESOLUTION.get(backbone)
        self.data_config = data_config or eval_data_config(backbone, self.settings, resolution)
        self.pixels = PixelPipeline(self.data_config, draft=draft)
        self._model: Optional["torch.nn.Module"] = None
        self._slot: dict = {}  # the loaded engine and its note, shared by the copies ``reconfigured`` makes
        self._engine: Optional[engines.Engine] = None
        self._engine_lock = threading.Lock()
        self.engine_note = ""  # why the engine in use is not the one asked for, or how its graph was checked

    # The engine, its lock and its note live in ``_slot``, so a copy for other views (a progressive run's stages)
    # loads nothing again.
    _engine = property(lambda self: self._slot.get("engine"), lambda self, v: self._slot.__setitem__("engine", v))
    _engine_lock = property(lambda self: self._slot["lock"], lambda self, v: self._slot.__setitem__("lock", v))
    engine_note = property(lambda self: self._slot.get("note", ""), lambda self, v: self._slot.__setitem__("note", v))

    @property
    def model(self) -> "torch.nn.Module":
        """The PyTorch model (loaded on first use): the torch engine's, the graph's export and check."""
        import torch

        if self._model is None:
            model = create_model(self.backbone, num_classes=0)
            model = model.to(pick_device(self.device))
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._model = model
        return self._model

    @property
    def resolution(self) -> int:
        """The model's input side in pixels (``data_config``'s input size)."""
        return int(self.data_config["input_size"][-1])

    @property
    def n_views(self) -> int:
        """The view set's number of views."""
        return view_sets.n_views(self.views)

    @property
    def n_extracted_views(self) -> int:
        """Views this extractor computes of each photo: its set's from ``first_view`` on."""
        return self.n_views - self.first_view

    @property
    def model_identity(self) -> dict:
        """Everything that determines the network's output for a given input: the exported graph's key."""
        return {"backbone": self.spec.name, "weights": self.spec.weights_id, "data_config": self.data_config,
                "timm": timm_version()}

    @property
    def cache_identity(self) -> dict:
        """Everything that determines the features, for the cache key: the model, the order its views come in
        (``views.ORDER``: an entry holds the first k of them, whichever view set asked; see ``features.cache``) and
        the engine's precision (f32, bf16; f16 on CUDA). Not the engine itself: in f32 every engine's features agree
        with PyTorch's within ``graph.TOLERANCE`` (checked when its graph is built)."""
        return {**self.model_identity, "view_order": "dihedral", "precision": self.engine_precision}

    def reconfigured(self, *, views: Optional[str] = None, data_config: Optional[dict] = None,
                     resolution: Optional[int] = None, first_view: int = 0) -> "FeatureExtractor":
        """This extractor (of whatever kind, a Ray one too) for another view set and/or input size, computing
        the set's views from ``first_view`` on: itself when nothing changes; else a copy, which shares the loaded
        model and engine when only the views change."""
        views = view_sets.check_views(views or self.views)
        if data_config is None:
            data_config = self.data_config if resolution in (None, self.resolution) else \
                eval_data_config(self.backbone, self.settings, resolution)
        if data_config == self.data_config and views == self.views and first_view == self.first_view:
            return self
        twin = copy.copy(self)
        twin.views, twin.first_view = views, first_view
        if data_config != self.data_config:  # another input size: another exported graph, loaded on first use
            twin.data_config, twin.pixels = data_config, PixelPipeline(data_config, draft=self.draft)
            twin._slot = {}
            twin._engine, twin._engine_lock, twin.engine_note = None, threading.Lock(), ""
        return twin

    def on_cuda(self) -> bool:
        """Whether the model runs on a CUDA GPU; torch is imported only where an NVIDIA device exists."""
        if self._model is not None:
            return next(self._model.parameters()).device.type == "cuda"
        if self.device:
            return str(self.device).startswith("cuda")
        return cuda_present() and pick_device().type == "cuda"

    @property
    def engine_name(self) -> str:
        """The engine that runs (after any fallback), or that will run."""
        return self._engine.name if self._engine is not None else self._planned_choice().engine

    @property
    def engine_precision(self) -> str:
        """The precision the engine computes in (after any fallback), or will: "f32", "bf16" or "f16" (CUDA)."""
        return self._engine.precision if self._engine is not None else self._planned_choice().precision

    def _planned_choice(self) -> engines.Choice:
        return engine_loader.planned_choice(self)

    def plan(self) -> ExtractionPlan:
        """How an extraction uses this machine (``features.plan.plan_for``): explicit constructor settings win;
        otherwise one single-threaded lane per CPU on small machines (OpenVINO: one request on every CPU, fed by
        decoding threads), and decoding threads feeding a GPU."""
        return plan_for(self)

    # --- the engine ----------------------------------------------------------------------------------

    def load_engine(self, say=None) -> engines.Engine:
        """The inference engine, loaded on first use. A graph engine's graph is found on disk (no torch), or
        exported and checked against PyTorch once; if bf16 fails its check, the f32 engine runs instead; if a
        graph cannot be used, or the engine's package is missing, PyTorch runs instead; ``engine_note`` (each
        fallback also passed to ``say``) says why in one line."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._open_engine(say or (lambda line: None))
            return self._engine

    def _open_engine(self, say) -> engines.Engine:
        engine, self.engine_note = engine_loader.open_engine(self, say)
        return engine

    @property
    def engine_record(self) -> dict:
        """What the run record and the cache entry say about the engine that extracted."""
        return {"engine": self.engine_name, "precision": self.engine_precision, "engine_note": self.engine_note}

    # --- preprocessing -------------------------------------------------------------------------------

    def load_pixels(self, source: ImageSource) -> np.ndarray:
        """One photo decoded, resized and cropped as the model sees it: (H, W, 3) uint8 (``PixelPipeline``)."""
        return self.pixels.eval_pixels(source)

    def pixels_to_tensor(self, pixels: "np.ndarray | torch.Tensor", device: Optional["torch.device"] = None
                         ) -> "torch.Tensor":
        """(N, H, W, 3) uint8 pixels -> normalised float (N, 3, H, W) on ``device`` (``PixelPipeline.to_tensor``)."""
        return self.pixels.to_tensor(pixels, device, self.channels_last)

    def preprocess(self, source: ImageSource) -> "torch.Tensor":
        """One photo as the PyTorch model's normalised input tensor (3, H, W)."""
        if not self.pixels.has_pixel_stage:
            return self.pixels.plain_tensor(source)
        return self.pixels_to_tensor(self.load_pixels(source)[None])[0].contiguous()

    # --- the model -----------------------------------------------------------------------------------

    def features_of(self, batch: "torch.Tensor") -> np.ndarray:
        """Run the PyTorch model on a preprocessed batch (N, 3, H, W); returns (N, feature_dim) float32.

        On a CPU this runs on one lane's torch threads (``plan().threads``: one
        on machines with up to 8 CPUs): a model spread over several threads
        waits at every operator for its slowest thread, so when anything else
        runs on the machine a 2-thread prediction took 600-850 ms on the
        reference machine against 35-100 ms on one thread.
        """
        import torch

        model = self.model
        device = next(model.parameters()).device
        with self._lane_threads(torch=True), torch.inference_mode():
            if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
                batch = batch.pin_memory()
            precision = engines.choose("torch", self.precision, device.type == "cuda").precision
            return engines.TorchEngine(model, self.pixels, self.channels_last, precision).run_tensor(
                batch.to(device, non_blocking=True))

    def features_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Features of a (N, H, W, 3) uint8 batch of model inputs by the engine; (N, feature_dim) float32.
        Threads as in ``features_of``; one photo's prediction needs nothing more (no torch with a graph engine)."""
        engine = self.load_engine()
        with self._lane_threads(torch=engine.name == "torch"):
            return engine.run(pixels)

    def features_of_views(self, pixels: np.ndarray) -> np.ndarray:
        """Features of every view (``views.cut``) of a (N, H, W, 3) uint8 batch of photos from ``load_pixels``:
        (N, n_views, feature_dim) float32, one engine run for all of them."""
        engine = self.load_engine()
        with self._lane_threads(torch=engine.name == "torch"):
            return self._run_views(engine, pixels)

    def _run_views(self, engine: engines.Engine, pixels: np.ndarray) -> np.ndarray:
        """Every view of each photo through the engine: on a CPU in runs of at most ``CPU_BATCH_SIZE`` inputs (the
        batch size that keeps a single-threaded model's activations in cache), on a GPU in one run."""
        inputs = view_sets.cut(pixels, self.views, self.first_view)
        step = len(inputs) if self.on_cuda() else CPU_BATCH_SIZE
        features = np.concatenate([engine.run(inputs[i:i + step]) for i in range(0, len(inputs), step)])
        return features.reshape(len(pixels), self.n_extracted_views, features.shape[-1])

    def features_of_photos(self, sources: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
                           should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        """(n, n_views, dim) features of photos that must all be readable (``ImageError`` names the first that
        is not): one photo directly, in this thread (a prediction), several through ``transform``."""
        if len(sources) == 1 and self.pixels.has_pixel_stage:
            return self.features_of_views(self.load_pixels(sources[0])[None])
        result = self.transform(sources, progress=progress, should_cancel=should_cancel)
        if not result.ok.all():
            raise ImageError(result.errors[0][1])
        return result.features

    def _lane_threads(self, torch: bool):
        return torch_threads(self.plan().threads) if torch and not self.on_cuda() else nothing()

    # --- the pipeline (``features.stream``) ----------------------------------------------------------

    def transform(self, sources: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None) -> ExtractionResult:
        """Features of every readable photo in ``sources``; unreadable ones are reported, not fatal
        (``features.stream.extract``: photos stream through in bounded memory)."""
        return extract(self, sources, progress=progress, should_cancel=should_cancel)
