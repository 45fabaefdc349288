"""What a Ray extraction runs, and how big: the plan for a cluster, the decoding task and the model actor.

``plan_for`` sizes the pipeline from the cluster's nodes, each node's CPUs and
GPUs (``RayPlan``). ``decode_batch`` turns photo paths into 8-bit pixels with
the one pixel pipeline (``PixelPipeline``): a Ray task feeding GPU actors, or
inside each CPU actor; ``BackboneActor`` is the Ray actor that holds one loaded
backbone and turns pixels into features with the local extractor's own code. Nothing here imports ``ray``: the driver
(``features.distributed``) hands these to Ray Data, which runs them on the
workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from toptune_core.backbones.pixels import PixelPipeline, timm_version
from toptune_core.errors import ToptuneError
from toptune_core.features.extractor import FeatureExtractor

#: Photos per Ray batch (one decoding task, one actor call) on CPUs and on GPUs.
CPU_RAY_BATCH, GPU_RAY_BATCH = 16, 64
#: Photos per forward pass inside a CPU actor (small batches ran fastest on a CPU, see ``FeatureExtractor.plan``).
CPU_MODEL_BATCH = 4
#: At most this many CPU actors (one single-threaded model each) unless asked for more.
MAX_CPU_ACTORS = 32
#: Logical CPUs one decoding task asks for.
DECODE_CPUS = 0.5


def _floor3(x: float) -> float:
    """``x`` rounded down to thousandths: resource requests that never add up to more than the cluster has."""
    return math.floor(x * 1000) / 1000


@dataclass(frozen=True)
class RayPlan:
    """How a Ray extraction uses the cluster.

    ``actors`` models, each asking Ray for ``actor_cpus`` CPUs and ``actor_gpus`` GPUs. With GPUs, decoding
    tasks of ``decode_cpus`` each feed them; on CPUs each actor decodes its own batches (``decode_in_actor``),
    one lane as on one machine, so no node ever holds an actor without room to decode: a plan that counted
    the cluster's CPUs as one pool put a 0.75-CPU actor on each 1-CPU node and left no node room for a 0.5-CPU
    decoding task, and the extraction waited forever.
    """

    cpus: float
    gpus: float
    actors: int
    actor_cpus: float
    actor_gpus: float
    decode_cpus: float
    batch_size: int  # photos per Ray batch
    model_batch: int  # photos per forward pass in an actor
    threads: int  # torch threads per actor (0: torch's own choice, on a GPU)
    nodes: tuple[tuple[float, float], ...] = ()  # (CPUs, GPUs) of each node the plan was made for
    decode_in_actor: bool = False

    @property
    def device(self) -> str:
        return "cuda" if self.actor_gpus else "cpu"

    def describe(self) -> str:
        per = f"{self.actor_gpus:g} GPU + {self.actor_cpus:g} CPU" if self.actor_gpus else \
            f"{self.actor_cpus:g} CPU, {self.threads} thread(s)"
        decoding = "each actor decodes its own photos" if self.decode_in_actor else \
            f"decoding tasks of {self.decode_cpus:g} CPU"
        where = f"{len(self.nodes)} node(s), " if self.nodes else ""
        return (f"Ray cluster of {where}{self.cpus:g} CPU(s), {self.gpus:g} GPU(s): {self.actors} model actor(s) "
                f"of {per}; {decoding}; batches of {self.batch_size}")


def plan_for(nodes: Sequence[tuple[float, float]], *, actors: Optional[int] = None,
             batch_size: Optional[int] = None) -> RayPlan:
    """The plan for a cluster whose alive nodes have these (CPUs, GPUs) (explicit ``actors``/``batch_size`` win).

    With GPUs: one actor per GPU with (up to) one CPU to feed it, decoding tasks on the other CPUs.
    CPUs only: one single-threaded actor per whole CPU of each node (a node of 1.5 CPUs holds one), at most
    ``MAX_CPU_ACTORS``, each decoding its own batches; no decoding tasks, so every node that can hold an actor
    can also decode.
    """
    nodes = tuple((float(c), float(g)) for c, g in nodes)
    cpus, gpus = sum(c for c, _ in nodes), sum(g for _, g in nodes)
    if gpus >= 1:
        if cpus < 2 * DECODE_CPUS:
            raise ToptuneError(f"The Ray cluster has {cpus:g} CPU(s); a Ray extraction needs at least 1 (one for "
                               "decoding photos, one for the model).")
        n = actors or int(gpus)
        per_cpu = _floor3(min(1.0, (cpus - DECODE_CPUS) / n))
        decode = _floor3(min(1.0, cpus - n * per_cpu))
        return RayPlan(cpus, gpus, n, per_cpu, _floor3(min(1.0, gpus / n)), decode,
                       batch_size or GPU_RAY_BATCH, batch_size or GPU_RAY_BATCH, 0, nodes)
    slots = sum(int(math.floor(c)) for c, _ in nodes)
    if slots < 1:
        raise ToptuneError(f"The Ray cluster's nodes have {', '.join(f'{c:g}' for c, _ in nodes) or 'no'} CPU(s); "
                           "a Ray extraction needs a node with at least 1 CPU.")
    n = actors or min(slots, MAX_CPU_ACTORS)
    if n > slots:
        raise ToptuneError(f"{n} model actors do not fit on a Ray cluster whose nodes hold {slots} actor(s) of one "
                           "CPU; ask for fewer actors.")
    return RayPlan(cpus, gpus, n, 1.0, 0.0, 0.0, batch_size or CPU_RAY_BATCH, CPU_MODEL_BATCH, 1, nodes, True)


# --- what runs on the workers ------------------------------------------------------------------------

_PIPELINES: dict[str, PixelPipeline] = {}  # per worker process: one pixel pipeline per data config


def decode_batch(batch: dict, data_config: dict, draft: bool) -> dict:
    """Ray task: a batch of photo paths -> 8-bit pixels at the model's input size (``PixelPipeline``).

    Unreadable photos keep their row (``ok`` False, zero pixels, the one-line reason in ``error``).
    """
    key = repr((sorted(data_config.items()), draft))
    pipeline = _PIPELINES.get(key) or _PIPELINES.setdefault(key, PixelPipeline(data_config, draft=draft))
    paths = [str(p) for p in batch["path"]]
    loaded = pipeline.load_batch(paths, range(len(paths)))
    ok = np.asarray(loaded.ok, dtype=bool)
    pixels = np.zeros((len(paths), pipeline.size, pipeline.size, 3), dtype=np.uint8)
    pixels[ok] = loaded.pixels
    errors = np.array([""] * len(paths), dtype=object)
    for i, reason in loaded.errors:
        errors[i] = reason
    return {"index": batch["index"], "pixels": pixels, "ok": ok, "error": errors}


class BackboneActor:
    """Ray actor: one loaded backbone; a batch of pixels -> the features of every view of each photo,
    (n, n_views, dim) from the driver's ``first_view`` on (zeros for unreadable photos).

    The backbone runs on the inference engine the driver asked for (``features.engines``; "auto": ONNX
    Runtime on a CPU, PyTorch on a GPU), as a single lane: a graph engine's checked graph is found in the
    worker's own ``TOPTUNE_HOME``, or exported and checked there once; each batch says which engine ran.
    """

    def __init__(self, backbone: str, data_config: dict, timm: str, threads: int, device: str, model_batch: int,
                 channels_last: bool, engine: str, views: str, draft: Optional[bool] = None,
                 first_view: int = 0, precision: Optional[str] = None):
        if timm_version() != timm:
            raise ToptuneError(f"A Ray worker has timm {timm_version()}, the driver timm {timm}: the features "
                               "would differ. Install the same requirements.txt on every node.")
        self.extractor = FeatureExtractor(backbone, data_config=data_config, threads=threads or None, lanes=1,
                                          device=device, channels_last=channels_last, engine=engine, views=views,
                                          precision=precision).reconfigured(first_view=first_view)
        self.model_batch = model_batch
        self.draft = draft  # not None: this actor decodes its batches of paths itself (``decode_in_actor``)
        self.extractor.load_engine()

    def __call__(self, batch: dict) -> dict:
        if self.draft is not None:
            batch = decode_batch(batch, self.extractor.data_config, self.draft)
        ok = np.asarray(batch["ok"], dtype=bool)
        pixels = batch["pixels"][ok]
        step = max(1, self.model_batch // self.extractor.n_extracted_views)  # photos per forward pass: all their views
        chunks = [self.extractor.features_of_views(pixels[i:i + step]) for i in range(0, len(pixels), step)]
        dim = chunks[0].shape[-1] if chunks else self.extractor.spec.feature_dim
        features = np.zeros((len(ok), self.extractor.n_extracted_views, dim), dtype=np.float32)
        if chunks:
            features[ok] = np.concatenate(chunks)
        engine = self.extractor.engine_record
        return {"index": batch["index"], "ok": ok, "error": batch["error"], "features": features,
                "engine": np.array([engine["engine"]] * len(ok), dtype=object),
                "precision": np.array([engine["precision"]] * len(ok), dtype=object),
                "engine_note": np.array([engine["engine_note"]] * len(ok), dtype=object)}
