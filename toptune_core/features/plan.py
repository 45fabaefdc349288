"""How an extraction uses this machine: the plan (lanes, threads, batch size, engine and precision) and its result.

``plan_for(extractor)`` is ``FeatureExtractor.plan``: explicit constructor settings win; otherwise, on a CPU,
one lane per CPU this process may use (``system.thread_policy``: the affinity mask and any cgroup CPU quota, not
the host's cores), up to ``system.MAX_LANES``, each with ``cpus // lanes`` engine threads - so one
single-threaded lane per core on small machines. A lane decodes its batch (about 0.5 ms a 256-px photo, 25-50 ms
a 12-MP camera JPEG in draft mode) and runs the engine on it (about 6 ms a photo for EfficientNet-Lite0 with ONNX
Runtime on one core of the reference machine, 13 ms with PyTorch); the lanes' phases interleave, so every core is
always computing and none waits at a barrier for a core that is decoding - which is what one multi-threaded
PyTorch model plus decoding threads did: on 2 CPUs, decoding threads took turns with the model's threads and the
extraction ran at less than half the model's speed. OpenVINO is the exception: it runs one request on all the
CPUs, fed by decoding threads, which measured faster than its single-thread lanes (figures in ``plan_for``).
Batches of ``CPU_BATCH_SIZE`` model inputs: small batches keep the activations in cache (the bench prints the
ceiling per batch size). On CUDA the GPU computes (PyTorch); every CPU but the one feeding it decodes,
``CUDA_BATCH_SIZE`` inputs a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toptune_core.features import engines
from toptune_core.system import thread_policy


@dataclass
class ExtractionResult:
    """Features of the readable photos; ``ok[i]`` says whether photo i was readable."""

    features: np.ndarray  # (n_ok, n_views, feature_dim) float32: every view of each readable photo
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[int, str]]  # (index, plain-word reason) of unreadable photos
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Photos per second (each photo counted once, whatever its number of views)."""
        return float(self.ok.sum()) / self.seconds if self.seconds else float("nan")


#: Default batch sizes in model inputs (views of photos; see ``plan_for``).
CPU_BATCH_SIZE = 4
CUDA_BATCH_SIZE = 64


@dataclass(frozen=True)
class ExtractionPlan:
    """How an extraction runs.

    ``lanes`` > 1 (CPU): that many threads each decode a batch and run the
    engine on it with ``threads`` threads of their own. ``lanes`` == 1:
    ``decode_workers`` threads decode ahead while the calling thread runs the
    engine (with ``threads`` threads on a CPU; 0 leaves torch's setting).
    """

    device: str
    batch_size: int
    lanes: int
    threads: int
    decode_workers: int
    engine: str = "torch"
    precision: str = "f32"

    def describe(self) -> str:
        engine = engines.describe(self.engine, precision=self.precision)
        if self.lanes > 1:
            return (f"{self.device}, {engine}, {self.lanes} lanes (decode + model) of {self.threads} thread(s), "
                    f"batch {self.batch_size}")
        threads = f"{self.threads} thread(s), " if self.threads else ""
        return f"{self.device}, {engine}, batch {self.batch_size}, {threads}{self.decode_workers} decoding thread(s)"


def plan_for(extractor) -> ExtractionPlan:
    """How ``extractor`` (a ``FeatureExtractor``) extracts on this machine (see the module docstring)."""
    policy = thread_policy()
    cpus = policy.cpus
    engine, precision = extractor.engine_name, extractor.engine_precision
    if extractor.on_cuda():
        decode = extractor.decode_workers if extractor.decode_workers is not None else max(1, cpus - 1)
        return ExtractionPlan("cuda", extractor.batch_size or _photos_per_batch(extractor, CUDA_BATCH_SIZE), 1,
                              extractor.threads or 0, decode, engine, precision)
    if engine == "openvino" and extractor.lanes is None:
        # OpenVINO spreads one request over its own threads well: on the reference machine (2 CPUs, 8 views at
        # 288 px) one request of 2 threads fed by a decoding thread extracted 361 passes/s in bf16 against 224 for
        # two single-thread lanes (162 against 97 in f32); ONNX Runtime is the other way round (118 against 165).
        lanes, threads = 1, extractor.threads or cpus
        default_decode = max(1, cpus // 4) if cpus > 1 else 0
    else:
        lanes = extractor.lanes or policy.lanes
        threads = extractor.threads or (policy.lane_threads if lanes == policy.lanes else max(1, cpus // lanes))
        # (with a single CPU, lanes == 1 and decoding in the model's thread avoids pointless switching)
        default_decode = 1 if cpus > 1 else 0
    decode = extractor.decode_workers if extractor.decode_workers is not None else default_decode
    return ExtractionPlan("cpu", extractor.batch_size or _photos_per_batch(extractor, CPU_BATCH_SIZE), lanes, threads,
                          decode, engine, precision)


def _photos_per_batch(extractor, inputs: int) -> int:
    """Photos per batch so that a batch holds about ``inputs`` model inputs (the views it extracts of each)."""
    return max(1, inputs // extractor.n_extracted_views)
