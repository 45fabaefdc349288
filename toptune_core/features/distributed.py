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
reads its objects itself (``data.storage``). ``ray`` is imported in this module only, and only when a Ray
extraction runs.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.backbones.pixels import timm_version
from toptune_core.config import Settings
from toptune_core.data.images import ImageSource
from toptune_core.data.storage import portable
from toptune_core.errors import Cancelled, ToptuneError
from toptune_core.features.cluster_work import BackboneActor, RayPlan, decode_batch, plan_for
from toptune_core.features.extractor import ExtractionResult, FeatureExtractor
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter, check_cancel

#: Seconds without a batch back before a Ray extraction gives up (``--stall-timeout``).
DEFAULT_STALL_SECONDS = 120.0
_PACKAGE = Path(__file__).resolve().parent.parent  # toptune_core, shipped to the workers of a remote cluster
_ONE_AT_A_TIME = threading.Lock()  # Ray extractions of this process share one Ray connection: one at a time


# --- the driver --------------------------------------------------------------------------------------

def connect(address: Optional[str]) -> str:
    """Connect this process to Ray and say to what: the cluster at ``address`` (``auto``,
    ``host:port`` or ``ray://host:port``), or, without one, a local runtime on this machine.
    A process already connected stays connected (to whatever it is connected to)."""
    import ray

    if ray.is_initialized():
        return "the Ray runtime this process is connected to"
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        _check_reachable(address)
    try:
        if address:
            # The workers of an existing cluster get this toptune_core; its dependencies they must have.
            ray.init(address=address, runtime_env={"py_modules": [str(_PACKAGE)]}, **quiet)
            return f"the Ray cluster at {address}"
        # "local": a new runtime of our own; a bare ray.init() would join any cluster it finds recorded on this
        # machine, and wait forever for one that has stopped without cleaning up after itself
        ray.init(address="local", include_dashboard=False, **quiet)
        return "a local Ray runtime"
    except Exception as e:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray runtime"
        cause = e.__cause__ or e.__context__
        why = _one_line(e) + (f" ({_first_sentence(cause)})" if cause is not None else "")
        raise ToptuneError(f"Could not connect to {where}: {why} Check the address (the head node's `ray status` "
                           "shows it) and, if the cluster uses token authentication, that its token is here "
                           "(~/.ray/auth_token or RAY_AUTH_TOKEN, with RAY_AUTH_MODE=token).") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error at once when nothing answers at a ``host:port`` or ``ray://host:port`` address
    (``ray.init`` itself retries an unreachable address for minutes). ``auto`` is Ray's to find."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ToptuneError(f"Nothing answers at the Ray address '{address}' ({e.strerror or _one_line(e)}). Check "
                           "the address (`ray status` on the head node shows it) and that this machine can reach "
                           "it.") from None


class _ConsoleWarningsOnly(logging.Filter):
    """On the terminal, Ray Data's warnings only: its INFO notes (plans, stats) are noise there, its errors
    come back as the extraction's one-line error, and its note that its own progress bars are off is ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno == logging.WARNING and "Progress bars disabled" not in record.getMessage()


def _quiet_ray_data() -> None:
    """Filter the terminal handlers of Ray Data's logger (its log file keeps everything)."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and not any(isinstance(f, _ConsoleWarningsOnly) for f in handler.filters):
            handler.addFilter(_ConsoleWarningsOnly())


def _first_sentence(e: BaseException) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return first.split(". ", 1)[0].rstrip(".")[:200]


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = (lines[-1] if lines else type(e).__name__)[:300]
    return text if text.endswith(".") else text + "."


_RAISED = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Cancelled)): (.+)$")


def _worker_error(e: BaseException) -> ToptuneError:
    """A failure inside the Ray pipeline as one line. Ray hands the worker's exception back as text (an actor
    that failed to start has no exception object), whose last ``Type: message`` line is the worker's own: a
    toptune error keeps its words."""
    from toptune_core import errors

    for line in reversed(str(e).splitlines()):
        match = _RAISED.match(line)
        if match:
            kind, message = match.groups()
            if isinstance(getattr(errors, kind, None), type):
                return ToptuneError(message.strip())
            return ToptuneError(f"The Ray extraction failed on a worker ({kind}: {message.strip()[:300]}).")
    return ToptuneError(f"The Ray extraction failed: {_one_line(e)} The Ray Data log has the details"
                        f"{_log_hint()}.")


def _log_hint() -> str:
    try:
        from ray.data._internal.logging import get_log_directory

        folder = get_log_directory()
    except Exception:
        folder = None
    return f" ({folder})" if folder else ""


def _take_the_slot(should_cancel: Optional[CancelCheck]) -> threading.Lock:
    """Acquire this process's one Ray slot (waiting can be cancelled); the caller hands it on or releases it."""
    while not _ONE_AT_A_TIME.acquire(timeout=0.1):
        if should_cancel is not None and should_cancel():
            raise Cancelled("Feature extraction was cancelled (while waiting for another Ray extraction).")
    return _ONE_AT_A_TIME


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
        slot, handed_over = _take_the_slot(should_cancel), False
        try:
            meter.update(0, "connecting to Ray")
            self.connected_to_ = connect(self.address)
            plan = self.cluster_plan()
            # no more actors than batches: an actor with nothing to do would only load a model
            self.last_plan_ = plan = replace(plan, actors=max(1, min(plan.actors,
                                                                   math.ceil(len(paths) / plan.batch_size))))
            meter.update(0, f"starting {plan.actors} model actor(s) on {self.connected_to_}")
            batches = _Stream(self._dataset(paths, plan), slot, self.stall_seconds, plan)
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
        if _Executors not in ctx.custom_execution_callback_classes:
            ctx.custom_execution_callback_classes.append(_Executors)
        _quiet_ray_data()
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

    def _collect(self, batches: "_Stream", n: int, meter: ProgressMeter, start: float
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


@contextmanager
def simulated_cluster(node_cpus: Sequence[int]) -> Iterator[str]:
    """A simulated multi-node cluster on this machine (``ray.cluster_utils.Cluster``: a raylet per node), this
    process connected to it for the block; its address. For benchmarks and tests; a process already connected to
    another runtime is disconnected first."""
    import os

    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    environ = dict(os.environ)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0], "include_dashboard": False})
    try:
        for cpus in node_cpus[1:]:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(environ)  # ray.init sets variables of this process


def node_resources() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node of the connected cluster."""
    import ray

    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def stall_message(seconds: float, plan: RayPlan) -> str:
    """One line: nothing came back for ``seconds``, what Ray could not place, what the nodes have free."""
    import ray

    pending = "unknown"
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demand = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
        asks = [f"{r.count} x {_bundle(r.bundle)}" for d in demand.ray_task_actor_demand for r in d.bundles_by_count]
        pending = ", ".join(asks) or "nothing (the work is placed but not answering)"
    except Exception as e:  # an older or a remote cluster without that API: say so rather than fail
        pending = f"not known ({type(e).__name__})"
    try:
        free = [_bundle({k: v for k, v in r.items() if k in ("CPU", "GPU")})
                for r in ray._private.state.available_resources_per_node().values()]
    except Exception:
        free = []
    return (f"The Ray extraction got no features for {seconds:g} s and was stopped (nothing was cached). Ray could "
            f"not place: {pending}; free per node: {'; '.join(free) or 'unknown'}. The plan: {plan.describe()}. "
            "Add nodes or CPUs, ask for fewer --actors, or raise --stall-timeout if the cluster is only slow.")


def _bundle(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}" if resources else "{}"


class _Executors:
    """A Ray Data execution callback (``DataContext.custom_execution_callback_classes``): the executor each
    thread started, so that a cancel can shut it down at once. Without it, Ray Data stops only when its
    iterator closes, at the next batch: after the actors have loaded their models, seconds later."""

    running: dict[Optional[int], object] = {}

    def before_execution_starts(self, executor) -> None:
        self.running[threading.get_ident()] = executor

    def on_execution_step(self, executor) -> None:
        pass

    def after_execution_succeeds(self, executor) -> None:
        self._forget(executor)

    def after_execution_fails(self, executor, error: Exception) -> None:
        self._forget(executor)

    def _forget(self, executor) -> None:
        for thread, running in list(self.running.items()):
            if running is executor:
                self.running.pop(thread, None)


class _Stream:
    """The Ray dataset's batches, consumed in a thread of their own so that the caller can poll for cancel.

    ``batches()`` yields them (numpy dicts); a pipeline failure is raised as one
    line. ``stop()`` shuts the pipeline down (its tasks and actors) and the
    thread ends; the thread releases ``slot`` when Ray has stopped.
    """

    _END = object()

    def __init__(self, dataset, slot: threading.Lock, stall_seconds: float, plan: RayPlan):
        self._stall_seconds, self._plan = stall_seconds, plan
        self._queue: "queue.Queue" = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._slot = slot
        self._thread = threading.Thread(target=self._run, args=(dataset,), name="ray-extract", daemon=True)
        self._thread.start()

    def _run(self, dataset) -> None:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                if self._stop.is_set():
                    break  # leaving the loop closes Ray Data's iterator, which shuts its executor down
                self._put(batch)
            self._put(self._END)
        except BaseException as e:
            self._put(e)
        finally:
            self._slot.release()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def batches(self, should_cancel: Optional[CancelCheck]) -> Iterator[dict]:
        """The batches as they arrive; ``should_cancel`` is polled while waiting (``Cancelled``); no batch for
        ``stall_seconds`` is one ``ToptuneError`` naming what Ray could not place."""
        last = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                check_cancel(should_cancel, "Extract")
                if not self._thread.is_alive() and self._queue.empty():
                    raise ToptuneError("The Ray extraction stopped without an answer; see the Ray logs.")
                if time.monotonic() - last > self._stall_seconds:
                    raise ToptuneError(stall_message(self._stall_seconds, self._plan)) from None
                continue
            last = time.monotonic()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise _worker_error(item) from None
            yield item

    def stop(self) -> None:
        """Stop the pipeline now: ``_Executors`` knows this thread's Ray Data executor."""
        if self._stop.is_set():
            return
        self._stop.set()
        executor = _Executors.running.get(self._thread.ident)
        if executor is not None:  # ends the tasks and actors now, and wakes the waiting iterator
            try:
                executor.shutdown(force=True)
            except Exception:  # it may be shutting down already; the iterator then closes at the next batch
                pass
