"""Ray extraction on simulated multi-node clusters (``ray.cluster_utils.Cluster``: real raylets, one process
tree per node, on this machine): small nodes never hang, features equal a local extraction, the next run is a
cache hit, and a cancel, a killed node or work Ray cannot place ends in one clear line with nothing cached.
Each test starts its cluster and shuts it down. Run in a process of their own by tests/test_ray_cluster.py: after
another module's Ray runtime had stopped in the same process, Ray Data's actors on a new cluster were cancelled
before they started (seen in the full suite, not explained yet)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from tests.conftest import copy_subset
from toptune_core.config import DEMO_DATASET
from toptune_core.data.dataset import load_dataset
from toptune_core.errors import Cancelled, ToptuneError
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.distributed import RayFeatureExtractor
from toptune_core.features.extractor import FeatureExtractor

BACKBONE = "tf_efficientnet_lite0"
ONE_VIEW = {"views": "1", "resolution": 224}  # the cluster's behaviour, not the views, is under test here


def start_cluster(node_cpus: list[int]):
    """A head node and worker nodes with these CPUs; this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0], "include_dashboard": False})
    for cpus in node_cpus[1:]:
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    return cluster


def stop_cluster(cluster, environ: dict) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()
    os.environ.clear()
    os.environ.update(environ)  # ray.init sets variables of this process


@pytest.fixture
def photos(tmp_path):
    return copy_subset(DEMO_DATASET, tmp_path / "beans", 8)  # 24 photos: two batches, two actors


@pytest.fixture(scope="module")
def local_features(tmp_path_factory):
    data = copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("local") / "beans", 8)
    return get_features(load_dataset(data), FeatureExtractor(BACKBONE, **ONE_VIEW),
                        FeatureCache(tmp_path_factory.mktemp("cache"))).entry.features


@pytest.mark.parametrize("node_cpus", [[2, 1, 1]], ids=["1x2+2x1"])  # 1-CPU nodes beside a 2-CPU one
def test_small_nodes_extract_the_local_features_and_the_next_run_is_a_cache_hit(node_cpus, photos, local_features):
    environ = dict(os.environ)
    cluster = start_cluster(node_cpus)
    try:
        dataset, cache = load_dataset(photos), FeatureCache()
        extractor = RayFeatureExtractor(BACKBONE, stall_seconds=90, **ONE_VIEW)
        fs = get_features(dataset, extractor, cache)
        plan = extractor.last_plan_
        assert plan.decode_in_actor and len(plan.nodes) == len(node_cpus) and plan.actors == 2
    finally:
        stop_cluster(cluster, environ)
    assert not fs.cache_hit and fs.entry.ok.all()
    np.testing.assert_allclose(fs.entry.features, local_features, rtol=0, atol=1e-4)
    again = get_features(dataset, FeatureExtractor(BACKBONE, **ONE_VIEW), cache)  # a local run afterwards
    assert again.cache_hit and again.entry.key == fs.entry.key


def _no_entry(cache: FeatureCache, dataset, extractor) -> bool:
    return cache.load(cache.key(dataset.fingerprint(), extractor.cache_identity)) is None


def test_work_ray_cannot_place_stops_with_one_line_and_caches_nothing(photos):
    """Every CPU of a 2 x 1-CPU cluster is held by another job's actor: the model actors cannot be placed."""
    import ray

    environ = dict(os.environ)
    cluster = start_cluster([1, 1])
    try:
        @ray.remote(num_cpus=1)
        class Squatter:
            def ready(self) -> bool:
                return True

        squatters = [Squatter.remote() for _ in range(2)]
        ray.get([s.ready.remote() for s in squatters])
        dataset, cache = load_dataset(photos), FeatureCache()
        extractor = RayFeatureExtractor(BACKBONE, stall_seconds=8, **ONE_VIEW)
        start = time.monotonic()
        with pytest.raises(ToptuneError) as caught:
            get_features(dataset, extractor, cache)
        waited = time.monotonic() - start
    finally:
        stop_cluster(cluster, environ)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("The Ray extraction got no features for 8 s")
    assert "Ray could not place: " in message and "CPU: 1" in message and "free per node" in message
    assert waited < 60 and _no_entry(cache, dataset, extractor)


def test_cancel_and_a_killed_node_leave_no_cache_entry(photos):
    environ = dict(os.environ)
    cluster = start_cluster([1, 1])
    try:
        dataset, cache = load_dataset(photos), FeatureCache()
        extractor = RayFeatureExtractor(BACKBONE, stall_seconds=150, **ONE_VIEW)  # actors start slowly on a busy machine
        seen = threading.Event()
        with pytest.raises(Cancelled):
            get_features(dataset, extractor, cache, progress=lambda p: p.done and seen.set(),
                         should_cancel=seen.is_set)  # cancelled as soon as the first batch is in
        assert _no_entry(cache, dataset, extractor)

        worker = next(n for n in cluster.worker_nodes)
        outcome = {}

        def run() -> None:
            try:
                get_features(dataset, extractor.reconfigured(views="flip"), cache)  # a new entry, slower
                outcome["done"] = True
            except ToptuneError as e:
                outcome["error"] = str(e)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(4)  # the actors are starting or running
        cluster.remove_node(worker)
        thread.join(240)
        assert not thread.is_alive()
    finally:
        stop_cluster(cluster, environ)
    flip = extractor.reconfigured(views="flip")
    if "error" in outcome:  # the usual end: one line, nothing cached
        assert "\n" not in outcome["error"] and _no_entry(cache, dataset, flip), outcome
    else:  # Ray moved the work to the surviving node: then the entry is whole
        entry = cache.load(cache.key(dataset.fingerprint(), flip.cache_identity))
        assert entry is not None and entry.ok.all() and entry.features.shape == (24, 2, 1280)
