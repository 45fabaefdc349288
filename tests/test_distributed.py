"""Feature extraction on Ray (Ray Data): the same features, in the same cache entry, as on one machine.

One local Ray runtime with 2 CPUs (no dashboard) serves the module and is
stopped at its end; the command line reaches it with ``--address``, as it
would an existing cluster; in-process extractions use the connection this
process already has. Throughput is measured by the README's commands, not here.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, copy_subset, seed_cache
from toptune_core.config import DEMO_DATASET
from toptune_core.data.dataset import load_dataset
from toptune_core.errors import Cancelled, ToptuneError
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.features.cluster_work import plan_for
from toptune_core.features.distributed import RayFeatureExtractor

BACKBONE = "tf_efficientnet_lite0"


def cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toptune_core", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray runtime of its own with 2 CPUs for the module (not one another process started on this machine);
    its address. (ray.init sets environment variables of this process, e.g. PYTHONBREAKPOINT: they are put back
    afterwards.)"""
    import os

    import ray

    environ = dict(os.environ)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environ)


# --- without a Ray runtime ---------------------------------------------------------------------------

@pytest.mark.parametrize("nodes", [[(1, 0)], [(1.5, 0)], [(2, 0)], [(1, 0), (1, 0)], [(1, 0)] * 3,
                                   [(2, 0), (1, 0), (1, 0)], [(0.5, 0), (1, 0)], [(8, 1)], [(16, 4)], [(48, 0)] * 5])
def test_every_node_that_holds_an_actor_can_decode(nodes):
    plan = plan_for(nodes)
    gpus = sum(g for _, g in nodes)
    if gpus:  # decoding tasks beside one actor per GPU, never more than the cluster has
        assert plan.actors * plan.actor_cpus + plan.decode_cpus <= sum(c for c, _ in nodes) + 1e-9
        assert plan.actors * plan.actor_gpus <= gpus + 1e-9 and plan.device == "cuda" and not plan.decode_in_actor
    else:  # one whole CPU per actor, each decoding its own photos: no node left holding an actor it cannot feed
        assert plan.decode_in_actor and plan.decode_cpus == 0 and plan.actor_cpus == 1.0 and plan.threads == 1
        assert plan.actors == min(sum(int(c) for c, _ in nodes), 32)
    assert plan.nodes == tuple((float(c), float(g)) for c, g in nodes)


def test_plan_on_two_cpus_and_impossible_plans():
    plan = plan_for([(2, 0)])
    assert (plan.actors, plan.actor_cpus, plan.decode_cpus, plan.threads) == (2, 1.0, 0.0, 1)
    assert plan_for([(8, 2)]).actors == 2 and plan_for([(8, 2)]).actor_gpus == 1
    with pytest.raises(ToptuneError, match="needs a node with at least 1 CPU"):
        plan_for([(0.5, 0), (0.5, 0)])
    with pytest.raises(ToptuneError, match="fewer actors"):
        plan_for([(2, 0)], actors=100_000)


def test_only_the_ray_extraction_modules_import_ray(subprocess_env):
    sources = [p for folder in ("toptune_core", "pages") for p in (REPO / folder).rglob("*.py")]
    importers = [p.relative_to(REPO).as_posix() for p in sources
                 if re.search(r"^\s*(import ray|from ray\b)", p.read_text(), re.M)]
    assert sorted(importers) == ["toptune_core/features/distributed.py", "toptune_core/features/ray_connect.py"]
    code = ("import sys, toptune_core.cli.main as m, toptune_core.experiment, toptune_core.features.cache, "
            "toptune_core.features.distributed; m.build_parser(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_an_unreachable_cluster_is_one_clear_line(subprocess_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = cli(["extract", "--data", str(DEMO_DATASET), "--engine", "ray", "--address", f"127.0.0.1:{port}"],
              subprocess_env, timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Nothing answers at the Ray address '127.0.0.1:{port}'")
    assert "Traceback" not in out.stderr
    wrong = cli(["extract", "--data", str(DEMO_DATASET), "--address", "auto"], subprocess_env)
    assert wrong.returncode == 2 and "--address and --actors go with --engine ray" in wrong.stderr


def test_a_stale_cluster_record_does_not_hang_the_local_runtime(subprocess_env):
    """A `ray start` killed without `ray stop` leaves its address recorded on the machine; a plain ray.init()
    would wait for it forever. The local runtime is a new one of its own."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        code = ("import ray; from toptune_core.features.distributed import connect; print(connect(None)); "
                "print(ray.cluster_resources().get('CPU')); ray.shutdown()")
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**subprocess_env, "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "a local Ray runtime", out.stderr[-2000:]


# --- on a local Ray runtime ----------------------------------------------------------------------------

def test_ray_extract_writes_the_local_cache_entry_and_toptune_then_hits_it(ray_address, subprocess_env, toptune_home,
                                                                              lite0_extractor, demo_lite0_cache,
                                                                              tmp_path):
    from toptune_core.experiment import run_toptuning
    from toptune_core.runs.store import RunStore

    out = cli(["extract", "--data", str(DEMO_DATASET), "--backbone", BACKBONE, "--views", "1", "--resolution", "224",
               "--engine", "ray", "--address", ray_address, "--json", str(tmp_path / "extract.json")], subprocess_env)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "extract.json").read_text())
    assert report["cache_hit"] is False and report["n_features"] == 300 and "2 model actor(s)" in report["plan"]
    assert "extracted features of 300 of 300 photos" in out.stdout

    dataset = load_dataset(DEMO_DATASET)
    local = get_features(dataset, lite0_extractor, FeatureCache(seed_cache(demo_lite0_cache, tmp_path / "local_cache")))
    assert local.entry.key == report["cache_key"], "the same cache key as a local extraction"
    on_ray = FeatureCache(toptune_home / "features").load(report["cache_key"])
    assert on_ray.relpaths == local.entry.relpaths and on_ray.ok.all()
    assert on_ray.meta["engine"] == local.entry.meta["engine"], "the actors ran the same inference engine"
    assert on_ray.meta["precision"] == local.entry.meta["precision"] == "f32", "in the same precision"
    assert on_ray.meta["engine_note"].startswith("on Ray: Ray cluster of 1 node(s), 2 CPU(s)")
    np.testing.assert_allclose(on_ray.features, local.entry.features, rtol=0, atol=1e-4)
    assert np.abs(local.entry.features[0] - local.entry.features[1]).max() > 0.1, "not a vacuous comparison"

    toptune = cli(["toptune", "--data", str(DEMO_DATASET), "--backbone", BACKBONE, "--views", "1", "--resolution",
                   "224", "--json", str(tmp_path / "run.json")], subprocess_env)
    assert toptune.returncode == 0, toptune.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    here = run_toptuning(DEMO_DATASET, backbone=BACKBONE, store=RunStore(tmp_path / "runs"),
                         cache=FeatureCache(tmp_path / "local_cache"), extractor=lite0_extractor)
    assert run["cache_hit"] is True and here.timings["cache_hit"] is True
    assert run["accuracy"] == here.metrics["accuracy"] and run["n_test"] == here.split["n_test"]


def test_a_cancelled_ray_extraction_leaves_no_cache_entry(ray_address, toptune_home):
    import ray

    dataset = load_dataset(DEMO_DATASET)
    cache = FeatureCache(toptune_home / "features")
    extractor = RayFeatureExtractor(BACKBONE, views="1", resolution=224)
    computing, asked = threading.Event(), []
    seen = []

    def progress(p) -> None:
        seen.append(p)
        if p.done > 0:
            computing.set()

    def should_cancel() -> bool:
        if computing.is_set() and not asked:
            asked.append(time.monotonic())
        return bool(asked)

    with pytest.raises(Cancelled):
        get_features(dataset, extractor, cache, progress=progress, should_cancel=should_cancel)
    assert time.monotonic() - asked[0] < 5, "the cancel is prompt"
    assert 0 < seen[-1].done < 300, "cancelled midway"
    assert [p.name for p in cache.root.iterdir() if not p.name.startswith(".")] == []
    assert list(cache.root.glob(".tmp-*")) == [] and cache.load(cache.key(dataset.fingerprint(),
                                                                         extractor.cache_identity)) is None
    deadline = time.monotonic() + 15
    while ray.available_resources().get("CPU", 0) < 2:  # the actors and tasks are gone
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.1)
    again = extractor.transform(dataset.paths[:8])  # and the next extraction runs
    assert again.ok.all() and again.features.shape == (8, 1, 1280)


def test_toptune_with_the_ray_extractor_as_the_dashboard_runs_it(ray_address, lite0_extractor, tmp_path):
    """The Top-tune page's Ray engine: ``run_toptuning`` with a ``RayFeatureExtractor``; an unreadable photo is
    reported as a local extraction reports it."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.runs.store import RunStore

    root = copy_subset(DEMO_DATASET, tmp_path / "beans", 16)
    (root / "healthy" / "broken.jpg").write_bytes(b"not a jpeg at all")
    store, cache = RunStore(tmp_path / "runs"), FeatureCache(tmp_path / "features")
    on_ray = run_toptuning(root, backbone=BACKBONE, store=store, cache=cache,
                           extractor=RayFeatureExtractor(BACKBONE, views="1", resolution=224))
    assert on_ray.status == "completed" and on_ray.timings["cache_hit"] is False
    assert on_ray.timings["feature_extraction_seconds"] > 0 and on_ray.metrics["accuracy"] > 0.5
    assert [path for path, _ in on_ray.split["unreadable"]] == ["healthy/broken.jpg"]

    dataset = load_dataset(root)
    local = lite0_extractor.transform(dataset.paths)
    entry = cache.load(cache.key(dataset.fingerprint(), lite0_extractor.cache_identity))
    assert entry.ok.tolist() == local.ok.tolist() and entry.ok.sum() == 48
    assert entry.errors == [(dataset.relpaths[i], reason) for i, reason in local.errors]
    np.testing.assert_allclose(entry.features, local.features, rtol=0, atol=1e-4)
    here = run_toptuning(root, backbone=BACKBONE, store=store, cache=cache,
                         extractor=FeatureExtractor(BACKBONE, views="1", resolution=224))  # a cache hit: no model loaded
    def scores(run) -> dict:
        return {k: v for k, v in run.metrics.items() if k != "stages"}  # (the stages say when each was done)

    assert here.timings["cache_hit"] is True and scores(here) == scores(on_ray)


def test_bench_ray_prints_one_row_per_place_and_run(ray_address, tmp_path, capsys):
    from toptune_core.cli.main import main

    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 8)
    assert main(["bench-ray", "--data", str(data), "--where", "local,ray"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table] == ["where", "local", "ray"]
    ray_row = [cell.strip() for cell in table[2].split("|")[1:-1]]
    assert ray_row[2] == "24" and float(ray_row[3]) > 0 and "model actor(s)" in ray_row[-1]
