"""``python -m toptune_core bench``: how fast top-tuning is on this machine, in one table; the steps in order.

Every figure comes from the same run on the same machine:

* model-only ceiling - the backbone on random input tensors, best batch size, no decoding;
* naive baseline - the Eden notebooks' way: PIL open, full decode, torchvision
  transform one photo at a time, batches of 16, NCHW, ``torch.no_grad``;
* the project's extraction (``FeatureExtractor`` through ``get_features``),
  JPEG files to cached features, against both;
* the same two for 12-megapixel camera JPEGs, made from the dataset's photos;
* a cached rerun of ``python -m toptune_core toptune`` (process start to
  metrics) and the classifier fit inside it;
* single-photo prediction, warm and cold;
* resident memory during the extraction, and its growth with the number of photos.

This module owns the order of the steps and what they share (``_Bench``); the
tools are in ``bench.measure``, ``bench.ceiling``, ``bench.camera``, the table
in ``bench.report``. Everything is written to a temporary data folder
(``Settings.home``, passed to what the benchmark creates, and ``TOPTUNE_HOME``
of the processes it starts), removed at the end: the benchmark never touches
the user's runs or feature cache. Nothing heavy is imported at load time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toptune_core.bench.camera import make_camera_photos
from toptune_core.bench.ceiling import CPU_BATCH_SIZES, CUDA_BATCH_SIZES, graph_ceiling, model_ceiling, naive_rate
from toptune_core.bench.measure import (REPO_ROOT, OtherCpuUse, RssSampler, cpu_name, load_average, rss_mb, spread,
                                        time_command)
from toptune_core.bench.report import BenchContext, BenchReport, build_report
from toptune_core.config import Settings


@dataclass
class _Bench:
    """What the steps share: the settings of the temporary data folder, the data, the loaded model, the figures."""

    settings: Settings
    dataset: Any
    backbone: str
    repeats: int
    log: Callable[[str], None]
    ctx: BenchContext
    figs: dict
    extractor: Any = None
    device: Any = None
    on_gpu: bool = False
    camera: list = dataclasses.field(default_factory=list)
    run_id: str = ""

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self.dataset.paths]

    @property
    def home(self) -> Path:
        return self.settings.home


def run_bench(data: str, backbone: str, *, seed: int = 0, test_size: float = 0.25, camera_images: int = 64,
              naive_images: int = 256, repeats: int = 3,
              batch_sizes: Optional[tuple[int, ...]] = None, log: Callable[[str], None] = print,
              settings: Optional[Settings] = None) -> BenchReport:
    """Measure everything (see the module docstring); ``log`` gets a line as each step starts.

    ``settings``: the caller's settings; the benchmark keeps everything it writes in a temporary ``home``.
    """
    home = Path(tempfile.mkdtemp(prefix="toptune-bench-"))
    try:
        # everything in the temporary home, its exported graphs too (a cold start exports them)
        bench_settings = dataclasses.replace(settings or Settings.from_env(), home=home, graphs=None)
        return _run_bench(data, backbone, bench_settings, camera_images, naive_images, repeats, batch_sizes, log,
                          seed, test_size)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run_bench(data: str, backbone: str, settings: Settings, camera_images: int, naive_images: int, repeats: int,
               batch_sizes: Optional[tuple[int, ...]], log: Callable[[str], None], seed: int = 0,
               test_size: float = 0.25) -> BenchReport:
    from toptune_core.data.dataset import load_dataset

    load_before = load_average()
    other_cpu = OtherCpuUse()
    dataset = load_dataset(data)
    ctx = BenchContext(backbone, str(dataset.root), len(dataset.paths), len(dataset.classes), repeats,
                       load_before=load_before)
    b = _Bench(settings, dataset, backbone, repeats, log, ctx, {})
    _load_model(b)
    _extraction_and_ceiling(b, batch_sizes)
    _naive(b, naive_images)
    _camera(b, camera_images)
    _cached_rerun(b, seed, test_size)
    _prediction(b)
    ctx.load_after = load_average()
    ctx.others = other_cpu.result()
    b.figs["other_processes_cpus"], b.figs["steal_cpus"] = ctx.others if ctx.others else (None, None)
    return build_report(ctx, b.figs)


def _load_model(b: _Bench) -> None:
    """The project's extractor (default engine; its graph exported and checked here, in the temporary data
    folder) and the PyTorch model, which the ceilings, the naive baseline and the other engines share."""
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.system import available_cpus

    b.log("loading the model (and exporting and checking its graph)")
    t0 = time.perf_counter()
    import torch

    b.extractor = FeatureExtractor(b.backbone, settings=b.settings)
    b.device = next(b.extractor.model.parameters()).device
    b.extractor.load_engine(b.log)
    b.figs["model_load_s"] = time.perf_counter() - t0
    b.on_gpu = b.device.type == "cuda"
    ctx = b.ctx
    ctx.device_words = torch.cuda.get_device_name(b.device) if b.on_gpu else f"CPU ({cpu_name()})"
    ctx.cpus, ctx.torch_version, ctx.python_version = available_cpus(), torch.__version__, platform.python_version()
    ctx.extraction_settings = (f"{b.extractor.plan().describe()}, channels-last {b.extractor.channels_last}, "
                               f"JPEG draft mode {b.extractor.draft}"
                               + (", fp16 autocast, pinned memory" if b.on_gpu else "")
                               + (f"; {b.extractor.engine_note}" if b.extractor.engine_note else ""))


def engine_key(extractor) -> str:
    """How the figures name an extractor's engine: its name, with its precision unless f32 (``report.ENGINE_LABELS``;
    PyTorch's precision is its device's)."""
    name, precision = extractor.engine_name, extractor.engine_precision
    return name if precision == "f32" or name == "torch" else f"{name}:{precision}"


def _engines(b: _Bench) -> dict:
    """An extractor per engine that runs here (the project's default first, then each in f32), sharing the loaded
    model."""
    from toptune_core.features import engines
    from toptune_core.features.extractor import FeatureExtractor

    out = {engine_key(b.extractor): b.extractor}
    for name in ("torch",) + (() if b.on_gpu else engines.GRAPH_ENGINES):
        if name in out or not engines.installed(name):
            continue
        extractor = FeatureExtractor(b.backbone, engine=name, settings=b.settings, precision="f32")
        extractor._model = b.extractor.model
        extractor.load_engine(b.log)
        if extractor.engine_name == name:
            out[name] = extractor
    return out


def _ceilings(b: _Bench, extractors: dict, batch_sizes: Optional[tuple[int, ...]]) -> dict:
    """Each engine's model-only ceiling: a sweep that picks the setting (see ``bench.ceiling``)."""
    from toptune_core.features.graph import find_graph
    from toptune_core.system import available_cpus

    sizes = list(batch_sizes or (CUDA_BATCH_SIZES if b.on_gpu else CPU_BATCH_SIZES))
    out = {}
    for name, extractor in extractors.items():
        b.log(f"model-only ceiling of {name}, batch sizes {sizes}")
        if name == "torch":
            out[name] = model_ceiling(extractor, sizes)
        else:
            engine, precision = extractor.engine_name, extractor.engine_precision
            graph = find_graph(extractor.model_identity, b.settings, engine, precision)
            out[name] = graph_ceiling(engine, graph.path, int(extractor.data_config["input_size"][-1]),
                                      extractor.plan().lanes, available_cpus(), sizes, precision=precision)
    return out


def _extraction_and_ceiling(b: _Bench, batch_sizes: Optional[tuple[int, ...]]) -> None:
    """The project's extraction, JPEG files -> cached features, with each engine, alternating with each engine's
    model-only ceiling; and how far each engine's features are from PyTorch's.

    The first extraction (the project's default engine) also samples memory and is the first thing this
    process does after loading the model, so its memory is the extraction's (as in ``toptune``).
    """
    import torch

    from toptune_core.features.cache import FeatureCache, get_features
    from toptune_core.features.graph import cosine_similarities

    n, figs = b.ctx.n, b.figs
    cache = FeatureCache(settings=b.settings)
    checkpoints: dict[int, float] = {}
    features: dict[str, np.ndarray] = {}

    def at_checkpoint(p) -> None:
        if p.stage == "extract" and p.done:
            checkpoints[int(p.done)] = rss_mb()

    def extract(extractor, record_memory: bool = False) -> tuple[float, RssSampler]:
        shutil.rmtree(cache.path(cache.key(b.dataset.fingerprint(), extractor.cache_identity)), ignore_errors=True)
        with RssSampler() as mem:
            fs = get_features(b.dataset, extractor, cache, progress=at_checkpoint if record_memory else None)
        assert not fs.cache_hit and fs.entry.meta["engine"] == extractor.engine_name
        features[engine_key(extractor)] = fs.entry.features
        return int(fs.entry.ok.sum()) / fs.seconds, mem

    def cosines(name: str) -> Optional[np.ndarray]:
        if "torch" not in features:
            return None
        return cosine_similarities(features[name].reshape(-1, features[name].shape[-1]),
                                   features["torch"].reshape(-1, features["torch"].shape[-1]))

    default = engine_key(b.extractor)
    b.log(f"project extraction of {n} photos with {default} (1 of {b.repeats})")
    if b.on_gpu:
        torch.cuda.reset_peak_memory_stats(b.device)
    first_rate, mem = extract(b.extractor, True)
    gpu_peak = torch.cuda.max_memory_allocated(b.device) / 1e6 if b.on_gpu else None
    figs.update(peak_rss_mb=mem.peak, rss_before_mb=mem.start, gpu_peak_mb=gpu_peak, **_memory_growth(checkpoints, n))

    extractors = _engines(b)
    ceilings = _ceilings(b, extractors, batch_sizes)
    # The sweep only picks the setting: its best value is the maximum of many noisy samples, which would bias
    # the ceiling upwards. Each ceiling is the best of as many fresh runs of that setting as the extractions
    # get, alternating with them, so that all see the same machine.
    rates = {name: [] for name in extractors}
    rates[default].append(first_rate)
    ceiling_runs = {name: [] for name in extractors}
    for r in range(b.repeats):
        b.log(f"extraction with each engine ({r + 1} of {b.repeats}), then each ceiling's best setting again")
        for name, extractor in extractors.items():
            if len(rates[name]) <= r:
                rates[name].append(extract(extractor)[0])
        for name, ceiling in ceilings.items():
            ceiling_runs[name].append(ceiling.again())
    figs["engines"] = {name: {"extraction_ips": max(rates[name]), "extraction_runs_ips": rates[name],
                              "ceiling_ips": max(ceiling_runs[name]), "ceiling_runs_ips": ceiling_runs[name],
                              "ceiling_mode": ceilings[name].mode, "ceiling_batch_size": ceilings[name].batch_size,
                              "ceiling_table": ceilings[name].table,
                              "max_diff_vs_torch": (float(np.abs(features[name] - features["torch"]).max())
                                                    if "torch" in features else None),
                              "precision": extractors[name].engine_precision,
                              "min_cosine_vs_torch": (float(cosines(name).min()) if "torch" in features else None),
                              "mean_cosine_vs_torch": (float(cosines(name).mean()) if "torch" in features else None)}
                       for name in extractors}
    figs["default_engine"] = default
    figs["n_views"] = b.extractor.n_views  # backbone passes a photo: the ceilings count passes, the extractions photos
    figs["resolution"] = b.extractor.resolution
    figs["extraction_ips"] = max(rates[default])
    _decoding(b, b.extractor)


def _decoding(b: _Bench, extractor) -> None:
    """Decoding, resizing and cropping alone (Pillow and NumPy), in the extraction's lanes: its share of the
    extraction's time is extraction rate / decoding rate."""
    from concurrent.futures import ThreadPoolExecutor

    from toptune_core.features.reader import chunked

    plan, paths = extractor.plan(), b.paths
    batches = chunked(range(len(paths)), plan.batch_size)
    b.log("decoding alone")
    best = 0.0
    for _ in range(b.repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(max(1, plan.lanes)) as pool:
            list(pool.map(lambda idx: extractor.pixels.load_batch(paths, idx), batches))
        best = max(best, len(paths) / (time.perf_counter() - start))
    b.figs["decode_ips"] = best


def _memory_growth(checkpoints: dict[int, float], n: int) -> dict:
    """Resident memory at a few photo counts, and its growth per 1000 photos.

    Growth: least-squares slope over the second half of the photos (the first batches warm up allocator
    arenas and oneDNN's caches). Holding every decoded photo would add >= 150 MB / 1000.
    """
    marks = sorted(checkpoints)
    half = [m for m in marks if m >= n / 2]
    growth = (float(np.polyfit(half, [checkpoints[m] for m in half], 1)[0]) * 1000 if len(half) >= 3
              else float("nan"))
    shown = sorted(set(spread(marks, 4) + marks[-1:]))
    return {"rss_by_images": {m: checkpoints[m] for m in shown}, "rss_growth_mb_per_1000": growth}


def _naive(b: _Bench, naive_images: int) -> None:
    """The naive baseline on a spread subset of the same photos."""
    naive_paths = spread(b.paths, naive_images)
    b.ctx.n_naive = len(naive_paths)
    b.log(f"naive baseline on {len(naive_paths)} photos")
    b.figs["naive_ips"], _ = naive_rate(naive_paths, b.backbone, b.device, settings=b.settings)


def _camera(b: _Bench, camera_images: int) -> None:
    """The project's extraction and the naive baseline on 12-megapixel camera JPEGs."""
    b.log(f"making {camera_images} 12-MP camera JPEGs")
    b.camera = camera = make_camera_photos(spread(b.paths, camera_images), b.home / "camera_photos")
    b.ctx.n_camera = len(camera)
    camera_mb = sum(os.path.getsize(p) for p in camera) / len(camera) / 1e6
    b.log(f"project extraction of the camera JPEGs x {b.repeats}")
    camera_rates, camera_mem = [], None
    for _ in range(b.repeats):
        with RssSampler() as mem:
            result = b.extractor.transform(camera)
        camera_mem = camera_mem or mem  # the first run: before the naive baseline's full decodes
        camera_rates.append(int(result.ok.sum()) / result.seconds)
    b.ctx.camera_rss_before_mb = camera_mem.start
    b.log("naive baseline on the camera JPEGs")
    camera_naive, _ = naive_rate(camera, b.backbone, b.device, settings=b.settings)
    b.figs.update(camera_naive_ips=camera_naive, camera_ips=max(camera_rates), camera_runs_ips=camera_rates,
                  camera_mean_file_mb=camera_mb, camera_peak_rss_mb=camera_mem.peak)


def _subprocess_env(b: _Bench) -> dict:
    """The environment of the processes the benchmark starts: its own data folder, this checkout first."""
    pythonpath = [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "TOPTUNE_HOME": str(b.home), "PYTHONPATH": os.pathsep.join(pythonpath)}


def _cached_rerun(b: _Bench, seed: int, test_size: float) -> None:
    """Cached reruns of the real command in fresh processes, and of the run inside this process."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache
    from toptune_core.runs.store import RunStore

    b.log("cached reruns of `python -m toptune_core toptune`")
    env = _subprocess_env(b)
    summary_json = b.home / "rerun.json"
    rerun_cmd = [sys.executable, "-m", "toptune_core", "toptune", "--data", str(b.dataset.root), "--backbone",
                 b.backbone, "--seed", str(seed), "--test-size", str(test_size), "--json", str(summary_json)]
    rerun_s, _ = time_command(rerun_cmd, env, max(3, b.repeats))
    summary = json.loads(summary_json.read_text())
    probe = subprocess.run([sys.executable, "-c", "import sys; from toptune_core.cli.main import main; "
                            f"rc = main({rerun_cmd[3:]!r}); print('torch' in sys.modules)"],
                           env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    torch_loaded = probe.stdout.strip().splitlines()[-1:] == ["True"]
    startup_s, _ = time_command([sys.executable, "-c", "import toptune_core.cli.main; import toptune_core.experiment"],
                                env, 3)
    b.figs["startup_imports_s"] = startup_s
    store, cache = RunStore(b.home), FeatureCache(settings=b.settings)
    warm_reruns = [run_toptuning(b.dataset.root, backbone=b.backbone, extractor=b.extractor, seed=seed,
                                 test_size=test_size, store=store, cache=cache).timings["total_seconds"]
                   for _ in range(max(2, b.repeats))][1:]  # the first imports scikit-learn into this process
    b.figs["cached_rerun_in_process_s"] = min(warm_reruns)
    b.figs.update(cached_rerun_s=rerun_s, fit_s=summary["fit_seconds"], cache_hit=summary["cache_hit"],
                  rerun_imports_torch=torch_loaded, accuracy=summary["accuracy"])
    b.run_id = summary["run_id"]


def _prediction(b: _Bench) -> None:
    """Single-photo prediction: warm (model loaded, median of 20) and cold (a whole ``predict`` process)."""
    from toptune_core.predict import Predictor
    from toptune_core.runs.store import RunStore

    b.log("single-photo prediction, warm and cold")
    predictor = Predictor.from_run(b.run_id, store=RunStore(b.home), extractor=b.extractor)
    warm = {}
    for label, photo in (("dataset photo", b.paths[0]), ("12-MP photo", b.camera[0])):
        predictor.predict(photo)
        warm[label] = statistics.median(predictor.predict(photo).seconds for _ in range(20))
    # Cold: a whole new process, through a wrapper that reports the process's peak memory and heavy imports.
    # (VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent, this large benchmark)
    code = ("import json, sys; from toptune_core.cli.main import main; "
            f"rc = main(['predict', '--run', {b.run_id!r}, {b.camera[0]!r}]); "
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
            "print(json.dumps([int(hwm[0]) / 1e3 if hwm else float('nan'), "
            "sorted(m for m in ('torch', 'sklearn', 'pandas', 'timm') if m in sys.modules)]))")
    cold_s, result = time_command([sys.executable, "-c", code], _subprocess_env(b), max(3, b.repeats))
    cold_rss, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    b.figs.update(warm_predict_s=warm, cold_predict_s=cold_s, cold_predict_rss_mb=cold_rss,
                  cold_predict_imports=heavy)
