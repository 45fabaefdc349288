"""Feature extraction on a Ray cluster (Ray Data): the same features, into the same cache entry.

``RayFeatureExtractor`` is a ``FeatureExtractor`` whose ``transform`` runs on
Ray. The photo paths become a Ray dataset; Ray tasks decode, resize and crop
them to 8-bit pixels with the one pixel pipeline (``PixelPipeline``); an
actor pool runs the backbone (one model per actor, one GPU each where the
cluster has GPUs); the features stream back to the driver batch by batch and
are put back in dataset order. Everything else is the local extractor's (the
cache identity, prediction of a single photo), so ``get_features`` writes the
same cache entry as a local extraction, under the same key and lock, and a
later ``toptune`` on one machine is a cache hit.

Workers read the photos by path: on a cluster the dataset folder must be at
the same path on every node (a shared file system, or object storage mounted
there); ``s3://`` object URLs go to the workers as they are, and each worker
reads its objects itself (``data.storage``). Connecting and Ray's errors are ``features.ray_connect``; the
batches streamed back, cancel and stall are ``features.ray_stream``. ``ray`` is imported in these three modules
only, and only when a Ray extraction runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.backbones.pixels import timm_version
from toptune_core.config import Settings
from toptune_core.data.images import ImageSource
from toptune_core.data.storage import portable
from toptune_core.errors import ToptuneError
from toptune_core.features.cluster_work import BackboneActor, RayPlan, decode_batch, plan_for
from toptune_core.features.extractor import ExtractionResult, FeatureExtractor
from toptune_core.features.ray_connect import connect, node_resources, quiet_ray_data, simulated_cluster
from toptune_core.features.ray_stream import BatchStream, Executors, take_the_slot
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter

__all__ = ["DEFAULT_STALL_SECONDS", "RayFeatureExtractor", "connect", "node_resources", "simulated_cluster"]

#: Seconds without a batch back before a Ray extraction gives up (``--stall-timeout``).
DEFAULT_STALL_SECONDS = 120.0


class RayFeatureExtractor(FeatureExtractor):
    """A ``FeatureExtractor`` whose ``transform`` runs on Ray (module docstring).

    ``address``: an existing cluster (``auto``, ``host:port``, ``ray://host:port``);
    None starts a local Ray runtime (or uses the one this process is connected
    to). ``actors`` and ``batch_size``: overrides of ``plan_for``'s choice; ``engine``: the inference
    engine the actors run (``features.engines``; None: ``settings.engine``). ``stall_seconds``: when no batch
    has come back for this long, the extraction stops with one line naming what Ray could not place.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, address: Optional[str] = None,
                 actors: Optional[int] = None, batch_size: Optional[int] = None, channels_last: bool = True,
                 draft: bool = True, engine: Optional[str] = None, settings: Optional[Settings] = None,
                 views: Optional[str] = None, resolution: Optional[int] = None,
                 stall_seconds: float = DEFAULT_STALL_SECONDS):
        super().__init__(backbone, batch_size=batch_size, channels_last=channels_last, draft=draft,
                         engine=engine, settings=settings, views=views, resolution=resolution)
        self.address = address
        self.actors = actors
        if not stall_seconds > 0:
            raise ToptuneError(f"The stall timeout must be above 0 seconds (got {stall_seconds:g}).")
        self.stall_seconds = float(stall_seconds)
        self.last_plan_: Optional[RayPlan] = None  # what the last transform ran
        self.connected_to_: Optional[str] = None
        self.first_batch_seconds_: Optional[float] = None  # its start-up: connecting, starting the actors
        self.worker_engine_: Optional[dict] = None  # the inference engine the actors ran (``engine_record``)

    @property
    def engine_name(self) -> str:
        """The inference engine the actors ran (after any fallback), or that this machine would run."""
        return self.worker_engine_["engine"] if self.worker_engine_ else super().engine_name

    @property
    def engine_precision(self) -> str:
        """The precision the actors computed in, or that this machine would."""
        return self.worker_engine_["precision"] if self.worker_engine_ else super().engine_precision

    @property
    def engine_record(self) -> dict:
        """What the cache entry and the run record say about the engine: the actors', and where they ran."""
        if not self.worker_engine_:
            return super().engine_record
        where = f"on Ray: {self.last_plan_.describe()}" if self.last_plan_ else "on Ray"
        note = self.worker_engine_["engine_note"]
        return {"engine": self.worker_engine_["engine"], "precision": self.worker_engine_["precision"],
                "engine_note": f"{where}" + (f"; {note}" if note else "")}

    def cluster_plan(self) -> RayPlan:
        """``plan_for`` the alive nodes of the connected cluster, each with its own CPUs and GPUs."""
        return plan_for(node_resources(), actors=self.actors, batch_size=self.batch_size)

    def transform(self, sources: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
                  should_cancel: Optional[CancelCheck] = None) -> ExtractionResult:
        """Features of every readable photo in ``sources``, extracted on Ray; unreadable ones are reported.

        Sources that are not file paths (uploaded bytes) are extracted here, by the local extractor.
        """
        if not all(isinstance(s, (str, Path)) for s in sources):
            return super().transform(sources, progress=progress, should_cancel=should_cancel)
        paths = [portable(s) for s in sources]  # object URLs as they are: the workers read them
        meter = ProgressMeter("extract", len(paths), progress, "images", should_cancel)
        start = time.perf_counter()
        slot, handed_over = take_the_slot(should_cancel), False
        try:
            meter.update(0, "connecting to Ray")
            self.connected_to_ = connect(self.address)
            plan = self.cluster_plan()
            # no more actors than batches: an actor with nothing to do would only load a model
            self.last_plan_ = plan = replace(plan, actors=max(1, min(plan.actors,
                                                                   math.ceil(len(paths) / plan.batch_size))))
            meter.update(0, f"starting {plan.actors} model actor(s) on {self.connected_to_}")
            batches = BatchStream(self._dataset(paths, plan), slot, self.stall_seconds, plan)
            handed_over = True  # the stream's thread releases the slot once Ray has stopped
            features, ok, errors = self._collect(batches, len(paths), meter, start)
        finally:
            if not handed_over:
                slot.release()
        return ExtractionResult(features, ok, errors, time.perf_counter() - start)

    def _dataset(self, paths: list[str], plan: RayPlan):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # progress goes to the caller's callback
        ctx.enable_auto_log_stats = False
        if Executors not in ctx.custom_execution_callback_classes:
            ctx.custom_execution_callback_classes.append(Executors)
        quiet_ray_data()
        items = [{"index": i, "path": p} for i, p in enumerate(paths)]
        # One block per batch; Ray Data would bundle blocks smaller than a map's batch size, so the decoding
        # task takes its block whole and the actor's batch size is the smallest block's.
        blocks = max(1, math.ceil(len(items) / plan.batch_size))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        if not plan.decode_in_actor:
            ds = ds.map_batches(decode_batch, fn_kwargs={"data_config": self.data_config, "draft": self.draft},
                                batch_size=None, batch_format="numpy", num_cpus=plan.decode_cpus)
        args = {"backbone": self.backbone, "data_config": self.data_config, "timm": timm_version(),
                "threads": plan.threads, "device": plan.device, "model_batch": plan.model_batch,
                "channels_last": self.channels_last, "engine": self.engine, "precision": self.precision,
                "views": self.views, "first_view": self.first_view,
                "draft": self.draft if plan.decode_in_actor else None}
        return ds.map_batches(BackboneActor, fn_constructor_kwargs=args, batch_size=max(1, len(items) // blocks),
                              batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.actors),
                              num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None)

    def _collect(self, batches: "BatchStream", n: int, meter: ProgressMeter, start: float
                 ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Put the streamed batches back in dataset order, reporting progress; cancel stops the stream."""
        full: Optional[np.ndarray] = None
        ok = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}
        done = 0
        try:
            for batch in batches.batches(meter.should_cancel):
                index = np.asarray(batch["index"], dtype=np.int64)
                if full is None:
                    full = np.zeros((n,) + batch["features"].shape[1:], dtype=np.float32)
                    self.first_batch_seconds_ = time.perf_counter() - start
                    self.worker_engine_ = {key: str(batch[key][0]) for key in ("engine", "precision", "engine_note")}
                full[index] = batch["features"]
                ok[index] = batch["ok"]
                reasons.update((int(i), str(r)) for i, r, good in zip(index, batch["error"], batch["ok"]) if not good)
                done += len(index)
                meter.update(done)
        finally:
            batches.stop()
        features = full[ok] if full is not None else np.zeros((0, self.n_extracted_views, self.spec.feature_dim), np.float32)
        return features, ok, sorted(reasons.items())
