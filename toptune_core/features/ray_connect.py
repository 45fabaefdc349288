"""Ray for the feature extraction (``features.distributed``): connecting to a cluster or a local runtime, a
simulated multi-node cluster for benchmarks and tests, what the connected cluster has, and Ray's failures turned
into one line. ``ray`` is imported only inside these functions, when a Ray extraction runs.
"""

from __future__ import annotations

import logging
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from toptune_core.errors import ToptuneError
from toptune_core.features.cluster_work import RayPlan

_PACKAGE = Path(__file__).resolve().parent.parent  # toptune_core, shipped to the workers of a remote cluster


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


def quiet_ray_data() -> None:
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


def worker_error(e: BaseException) -> ToptuneError:
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
