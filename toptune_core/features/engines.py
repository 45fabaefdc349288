"""Inference engines for the frozen backbone: one interface, ``run(pixels) -> features``, selected by name, and
the precision they compute in.

* ``onnxruntime`` - ONNX Runtime on the exported graph (``features.graph``), f32:
  the CPU default where the CPU has no bf16. About twice PyTorch eager's speed on
  the 2-CPU reference machine, its features within 1e-5 of PyTorch's; one pip
  wheel for Windows, macOS and Linux, and the runtime the exported model
  (``toptune_core.portable``) needs. (Its CPU provider has no bf16 convolutions.)
* ``openvino`` - Intel's OpenVINO on the same graph, in f32 or bf16
  (``INFERENCE_PRECISION_HINT``): the CPU default where the CPU computes bf16
  natively (AVX512-BF16 or AMX), where it ran lite0 at 288 px 2.2x as fast as
  in f32 (README, "Engine precision"), its features at cosine similarity 0.999
  to PyTorch's f32 on average.
* ``torch`` - the PyTorch model itself (channels-last, ``inference_mode``; fp16
  autocast and pinned memory on CUDA): the engine on a GPU, for fine-tuning, and
  the fallback when a graph cannot be built or fails its check.

``"auto"`` (the default, ``TOPTUNE_ENGINE`` overrides it) means ``torch`` on a CUDA
GPU; on a CPU, ``openvino`` in bf16 where the CPU has bf16 (``cpu_has_bf16``)
and the precision allows it, else ``DEFAULT_CPU_ENGINE`` (f32) when installed,
else ``torch``. The precision (``TOPTUNE_PRECISION``: ``auto``, ``f32`` or
``bf16``) is settled with the engine by ``choose`` and is part of the feature
cache's identity. Every engine takes (N, H, W, 3) uint8 pixels from the one
pixel pipeline and returns (N, dim) float32 features (the graph's output 0,
``features``); ``run`` may be called from several threads at once (the
extraction's lanes).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from dataclasses import dataclass
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
#: Precisions a user may ask for ("auto": bf16 where the CPU has it, else f32); f16 is PyTorch's autocast on CUDA.
PRECISIONS = ("f32", "bf16")
BF16_CPU_ENGINE = "openvino"  # the graph engine that runs bf16 on a CPU (ONNX Runtime's CPU provider does not)
#: /proc/cpuinfo flags of native bf16 arithmetic: what OpenVINO's "BF16" capability stands for on x86.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class Engine(Protocol):
    name: str
    precision: str

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


def check_precision(precision: Optional[str]) -> str:
    precision = (precision or "auto").strip().lower()
    if precision != "auto" and precision not in PRECISIONS:
        raise ToptuneError(f"Unknown precision '{precision}'. Choose one of: auto, {', '.join(PRECISIONS)}.")
    return precision


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (once a process). On Linux read from the CPU's flags in
    ``/proc/cpuinfo`` (no import: a cache hit stays light), elsewhere asked of OpenVINO
    (``OPTIMIZATION_CAPABILITIES`` contains "BF16"); tests/test_precision.py checks that the two agree."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as fh:
                flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
            return any(flag in flags for flag in _BF16_FLAGS)
        except OSError:
            pass
    return openvino_reports_bf16()


def openvino_reports_bf16() -> bool:
    """OpenVINO's own answer: its CPU plugin lists "BF16" among its optimisation capabilities."""
    if not installed("openvino"):
        return False
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no CPU plugin, or an OpenVINO that cannot start here
        return False


@dataclass(frozen=True)
class Choice:
    """The engine and precision that run, and why they differ from what was asked for (``note``; "" if not)."""

    engine: str
    precision: str
    note: str = ""


def choose(name: str, precision: str, on_cuda: bool, *, bf16_cpu: Optional[bool] = None,
           available=installed) -> Choice:
    """The engine ``name`` ("auto" or one of ``ENGINES``) and ``precision`` ("auto", "f32", "bf16") stand for on
    this machine. ``bf16_cpu`` (default ``cpu_has_bf16()``) and ``available`` (an engine's package is installed)
    are parameters so that the rule can be tested for any machine.

    * CUDA: PyTorch; "auto" is fp16 autocast ("f16"), as before; "f32" or "bf16" as asked.
    * CPU, "auto" engine: OpenVINO in bf16 when the CPU has bf16, OpenVINO is installed and the precision is not
      "f32"; else ONNX Runtime (f32) when installed, else PyTorch (f32).
    * CPU, a named engine: OpenVINO in bf16 where the CPU has it (unless "f32" is asked); the others in f32.
    """
    name, precision = check_name(name), check_precision(precision)
    if on_cuda and name in ("auto", "torch"):
        return Choice("torch", "f16" if precision == "auto" else precision)
    if bf16_cpu is None:
        bf16_cpu = precision != "f32" and cpu_has_bf16()
    bf16 = precision != "f32" and bf16_cpu
    if name == "auto":
        if bf16 and available(BF16_CPU_ENGINE):
            return Choice(BF16_CPU_ENGINE, "bf16")
        name = DEFAULT_CPU_ENGINE if available(DEFAULT_CPU_ENGINE) else "torch"
    if name == BF16_CPU_ENGINE and bf16:
        return Choice(name, "bf16")
    note = ""
    if precision == "bf16" and not bf16_cpu:
        note = "bf16 was asked for, but this CPU has no native bf16: f32"
    elif precision == "bf16":
        note = f"bf16 was asked for, but {LABELS[name]} runs f32 on the CPU"
        if not available(BF16_CPU_ENGINE):
            note += f" (bf16 needs {LABELS[BF16_CPU_ENGINE]}, which is not installed)"
    return Choice(name, "f32", note)


def resolve(name: str, on_cuda: bool, precision: str = "auto") -> str:
    """The engine ``name`` ("auto" or one of ``ENGINES``) stands for on this machine (``choose``)."""
    return choose(name, precision, on_cuda).engine


class OnnxRuntimeEngine:
    """ONNX Runtime on an exported graph. One session; with ``threads`` == 1 each ``run`` computes on the
    calling thread, so the extraction's lanes run side by side on one session (one copy of the weights)."""

    name = "onnxruntime"
    precision = "f32"

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
        self.outputs = [self.session.get_outputs()[0].name]  # the features (a graph may have further outputs)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(self.outputs, {self.input: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]


class OpenVinoEngine:
    """OpenVINO on an exported graph in ``precision`` (f32 or bf16, ``INFERENCE_PRECISION_HINT``). Each caller
    running at the same time (a lane) gets an infer request of its own compiled model (one stream, ``threads``
    threads) from a pool: compiled when no idle one is left (about 2 s each for lite0), kept for the next call,
    whichever thread makes it, so a later extraction or prediction compiles nothing. (One compiled model of several
    streams shared by the lanes' synchronous requests hung now and then on the reference machine; a THROUGHPUT-hint
    model of 2 streams fed by an ``AsyncInferQueue`` measured no faster than two such lanes, and one request on
    every CPU measured faster than both, so an extraction now runs one caller: ``features.plan.plan_for``; README,
    "Engine precision: bf16 where the CPU has it".)"""

    name = "openvino"

    def __init__(self, graph: Path, threads: int = 1, streams: int = 1, precision: str = "f32",
                 cache_dir: Optional[Path] = None):
        import openvino as ov

        if precision not in PRECISIONS:
            raise ToptuneError(f"OpenVINO runs f32 or bf16 on the CPU, not '{precision}'.")
        self.precision = precision
        self.core = ov.Core()
        self.graph = str(graph)  # compiled from its path: with a cache folder, a later process reads the compiled blob
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(max(1, threads)),
                       "INFERENCE_PRECISION_HINT": precision}
        if cache_dir is not None:  # (OpenVINO's model cache: compiling again took half the time on the reference machine)
            self.config["CACHE_DIR"] = str(cache_dir)
        self._idle: list = []  # infer requests no caller is using, each of its own compiled model
        self._pool_lock = threading.Lock()
        self._compile_lock = threading.Lock()
        self._idle.append(self._compile())  # compile once now, so that a graph OpenVINO cannot run fails here

    def _compile(self):
        with self._compile_lock:
            return self.core.compile_model(self.graph, "CPU", self.config).create_infer_request()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        with self._pool_lock:
            request = self._idle.pop() if self._idle else None
        request = request or self._compile()
        try:
            request.infer({0: np.ascontiguousarray(pixels, dtype=np.uint8)}, share_inputs=True)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the request reuses it
        finally:
            with self._pool_lock:
                self._idle.append(request)


class TorchEngine:
    """The PyTorch model: pixels normalised by ``PixelPipeline.to_tensor``, channels-last, ``inference_mode``;
    on CUDA the 8-bit batch travels pinned and runs under autocast in ``precision`` ("f16" by default, "bf16",
    or none for "f32"); on a CPU in f32. Runs on the torch threads the caller set (``system.torch_threads``)."""

    name = "torch"

    def __init__(self, model: "torch.nn.Module", pixels, channels_last: bool = True, precision: str = "f16"):
        self.model, self.pixels, self.channels_last = model, pixels, channels_last
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.precision = precision if on_cuda else "f32"

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
        if batch.device.type == "cuda" and self.precision != "f32":
            with torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16):
                out = self.model(batch)
        else:
            out = self.model(batch)
        return out.float().cpu().numpy()


def open_graph_engine(name: str, graph: Path, *, threads: int = 1, lanes: int = 1, precision: str = "f32",
                      cache_dir: Optional[Path] = None) -> Engine:
    """An engine of ``GRAPH_ENGINES`` on an exported graph, for ``lanes`` callers of ``threads`` threads each,
    in ``precision`` (bf16: OpenVINO only); ``cache_dir``: where OpenVINO may keep its compiled models."""
    if name == "onnxruntime":
        if precision != "f32":
            raise ToptuneError(f"ONNX Runtime runs f32 on the CPU, not '{precision}'.")
        return OnnxRuntimeEngine(graph, threads)
    if name == "openvino":
        return OpenVinoEngine(graph, threads, lanes, precision, cache_dir)
    raise ToptuneError(f"'{name}' does not run exported graphs; use one of {', '.join(GRAPH_ENGINES)}.")


def describe(name: str, note: Optional[str] = None, precision: Optional[str] = None) -> str:
    """"OpenVINO, bf16 (note)": the engine's label, its precision and a note, as pages and reports show them."""
    return LABELS.get(name, name) + (f", {precision}" if precision else "") + (f" ({note})" if note else "")
