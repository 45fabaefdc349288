"""Inference engines for the frozen backbone: one interface, ``run(pixels) -> features``, selected by name.

* ``onnxruntime`` - ONNX Runtime on the exported graph (``features.graph``): the
  default on a CPU. Measured on the 2-CPU reference machine (tf_efficientnet_lite0,
  ``python -m toptune_core bench``) it runs the backbone about twice as fast as
  PyTorch eager, its features within 1e-5 of PyTorch's; it is one pip wheel for
  Windows, macOS (Intel and Apple silicon) and Linux, and the same runtime the
  exported model (``toptune_core.portable``) needs.
* ``openvino`` - Intel's OpenVINO on the same graph, fp32 (``INFERENCE_PRECISION_HINT``
  f32, so its features also agree within 1e-5). As fast or faster than ONNX
  Runtime on x86 CPUs, but a larger, x86-oriented install: chosen by name.
* ``torch`` - the PyTorch model itself (channels-last, ``inference_mode``; fp16
  autocast and pinned memory on CUDA): the engine on a GPU, for fine-tuning, and
  the fallback when a graph cannot be built or fails its check.

``"auto"`` (the default, ``TOPTUNE_ENGINE`` overrides it) means ``torch`` on a CUDA
GPU, else ``DEFAULT_CPU_ENGINE`` when installed, else ``torch``. Every engine takes
(N, H, W, 3) uint8 pixels from the one pixel pipeline and returns (N, dim) float32
features; ``run`` may be called from several threads at once (the extraction's lanes).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

import numpy as np

from toptune_core.errors import ToptuneError

if TYPE_CHECKING:
    import torch

ENGINES = ("onnxruntime", "openvino", "torch")
DEFAULT_CPU_ENGINE = "onnxruntime"
GRAPH_ENGINES = ("onnxruntime", "openvino")
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch"}
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}


class Engine(Protocol):
    name: str

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, dim) float32 features."""


def installed(name: str) -> bool:
    """True when the engine's package can be imported here (without importing it)."""
    return importlib.util.find_spec(_MODULES[name]) is not None


def check_name(name: str) -> str:
    name = (name or "auto").strip().lower()
    if name != "auto" and name not in ENGINES:
        raise ToptuneError(f"Unknown inference engine '{name}'. Choose one of: auto, {', '.join(ENGINES)}.")
    return name


def resolve(name: str, on_cuda: bool) -> str:
    """The engine ``name`` ("auto" or one of ``ENGINES``) stands for on this machine."""
    name = check_name(name)
    if name != "auto":
        return name
    if on_cuda:
        return "torch"
    return DEFAULT_CPU_ENGINE if installed(DEFAULT_CPU_ENGINE) else "torch"


class OnnxRuntimeEngine:
    """ONNX Runtime on an exported graph. One session; with ``threads`` == 1 each ``run`` computes on the
    calling thread, so the extraction's lanes run side by side on one session (one copy of the weights)."""

    name = "onnxruntime"

    def __init__(self, graph: "Path | bytes", threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        if threads > 1:  # lanes decode while others compute: an idle pool must not spin on their cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name  # the pooled features (a graph may also give its map)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]


class OpenVinoEngine:
    """OpenVINO on an exported graph, fp32 (``precision``): each calling thread (lane) gets its own compiled
    model of one stream and ``threads`` threads, compiled on its first call. (One compiled model of several
    streams shared by the lanes' synchronous requests hung now and then on the reference machine.)"""

    name = "openvino"

    def __init__(self, graph: Path, threads: int = 1, streams: int = 1, precision: str = "f32"):
        import openvino as ov

        self.core = ov.Core()
        self.graph = self.core.read_model(str(graph))
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(max(1, threads)),
                       "INFERENCE_PRECISION_HINT": precision}
        self._local = threading.local()
        self._compile_lock = threading.Lock()
        self._request()  # compile once now, so that a graph OpenVINO cannot run fails here

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            with self._compile_lock:
                compiled = self.core.compile_model(self.graph, "CPU", self.config)
            request = self._local.request = compiled.create_infer_request()
        return request

    def run(self, pixels: np.ndarray) -> np.ndarray:
        request = self._request()
        request.infer({0: np.ascontiguousarray(pixels, dtype=np.uint8)}, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the request reuses it


class TorchEngine:
    """The PyTorch model: pixels normalised by ``PixelPipeline.to_tensor``, channels-last, ``inference_mode``;
    on CUDA the 8-bit batch travels pinned and runs under fp16 autocast. Runs on the torch threads the caller
    set (``system.torch_threads``)."""

    name = "torch"

    def __init__(self, model: "torch.nn.Module", pixels, channels_last: bool = True):
        self.model, self.pixels, self.channels_last = model, pixels, channels_last

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            return self.run_tensor(self.pixels.to_tensor(pixels, device, self.channels_last))

    def run_tensor(self, batch: "torch.Tensor") -> np.ndarray:
        """A normalised (N, 3, H, W) batch already on the model's device."""
        import torch

        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if batch.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.model(batch)
        else:
            out = self.model(batch)
        return out.float().cpu().numpy()


def open_graph_engine(name: str, graph: Path, *, threads: int = 1, lanes: int = 1) -> Engine:
    """An engine of ``GRAPH_ENGINES`` on an exported graph, for ``lanes`` callers of ``threads`` threads each."""
    if name == "onnxruntime":
        return OnnxRuntimeEngine(graph, threads)
    if name == "openvino":
        return OpenVinoEngine(graph, threads, lanes)
    raise ToptuneError(f"'{name}' does not run exported graphs; use one of {', '.join(GRAPH_ENGINES)}.")


def describe(name: str, note: Optional[str] = None) -> str:
    return LABELS.get(name, name) + (f" ({note})" if note else "")
