"""``python -m toptune_core bench-views``: what views and input resolution cost, in one table.

For each (view set, resolution) the dataset's features are extracted into a fresh cache of a temporary data
folder (the same ``get_features`` a run calls), timed, with the peak resident memory of this process. Rates are
given per photo and per model input (a photo's views are model inputs), and each per-view rate as a ratio to
the single-view rate measured in the same run at the same resolution: views are cut from one decode and run in
the same batches, so a view costs about what a photo does. Then, with the default settings' features cached,
the real command is timed as new processes: a cached ``toptune`` rerun and a cold single-photo ``predict``.
Nothing touches the user's runs or cache.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from toptune_core.bench.measure import REPO_ROOT, RssSampler, load_average, time_command
from toptune_core.config import Settings


def bench_views(data: str, backbone: str, *, view_sets: Sequence[str], resolutions: Sequence[Optional[int]],
                repeats: int = 1, log: Callable[[str], None] = lambda line: None) -> dict:
    """The figures (JSON-ready): one row per (views, resolution), and the cached-rerun and cold-predict timings."""
    from toptune_core.data.dataset import load_dataset

    dataset = load_dataset(data)
    home = Path(tempfile.mkdtemp(prefix="toptune-bench-views-"))
    try:
        settings = Settings.from_env({**os.environ, "TOPTUNE_HOME": str(home)})
        rows = [_extraction_row(dataset, backbone, views, resolution, settings, log)
                for resolution in resolutions for views in view_sets]
        for row in rows:
            single = next((r for r in rows if r["views"] == "1" and r["resolution"] == row["resolution"]), None)
            row["per_view_ratio_to_1_view"] = (row["inputs_per_s"] / single["photos_per_s"]) if single else None
        processes = _processes(dataset, backbone, home, max(1, repeats), log)
        return {"backbone": backbone, "dataset": str(dataset.root), "n_photos": len(dataset),
                "load_average": load_average(), "cpus": os.cpu_count(), "rows": rows, **processes}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _extraction_row(dataset, backbone: str, views: str, resolution: Optional[int], settings: Settings,
                    log: Callable[[str], None]) -> dict:
    from toptune_core.features.cache import FeatureCache, get_features
    from toptune_core.features.extractor import FeatureExtractor

    extractor = FeatureExtractor(backbone, views=views, resolution=resolution, settings=settings)
    extractor.load_engine()  # the engine's start (and a graph's export) is not extraction time
    cache = FeatureCache(settings.features_dir / f"{views}-{extractor.resolution}")
    log(f"extracting {len(dataset)} photos x {extractor.n_views} view(s) at {extractor.resolution} px")
    with RssSampler() as rss:
        start = time.perf_counter()
        fs = get_features(dataset, extractor, cache)
        seconds = time.perf_counter() - start
    photos = int(fs.entry.ok.sum())
    return {"views": views, "n_views": extractor.n_views, "resolution": extractor.resolution, "seconds": seconds,
            "photos_per_s": photos / seconds, "inputs_per_s": photos * extractor.n_views / seconds,
            "peak_rss_mb": rss.peak, "engine": extractor.engine_name}


def _processes(dataset, backbone: str, home: Path, repeats: int, log: Callable[[str], None]) -> dict:
    """A cached ``toptune`` rerun and a cold ``predict`` of one photo, each a new process with the default
    settings (the first ``toptune`` extracts and is not timed)."""
    env = {**os.environ, "TOPTUNE_HOME": str(home / "processes"), "PYTHONPATH": str(REPO_ROOT)}
    out = home / "summary.json"
    cmd = [sys.executable, "-m", "toptune_core", "toptune", "--data", str(dataset.root), "--backbone", backbone,
           "--json", str(out)]
    log("first toptune run with the default settings (extracts; not timed)")
    time_command(cmd, env, 1)
    log("cached toptune reruns, new processes")
    rerun_s, _ = time_command(cmd, env, max(3, repeats))
    summary = json.loads(out.read_text())
    log("cold predict of one photo, new processes")
    predict_s, _ = time_command([sys.executable, "-m", "toptune_core", "predict", "--run", summary["run_id"],
                                 str(dataset.paths[0])], env, max(3, repeats))
    return {"cached_rerun_s": rerun_s, "cached_rerun_fit_s": summary["fit_seconds"],
            "cached_rerun_accuracy": summary["accuracy"], "default_classifier": summary["classifier"],
            "cold_predict_s": predict_s}


def views_table(figs: dict) -> str:
    """The figures as a Markdown table and two lines."""
    lines = [f"{figs['backbone']} on {figs['dataset']} ({figs['n_photos']} photos); {figs['cpus']} CPU(s), load "
             f"average at the end {figs['load_average']}", "",
             "| views | resolution | extraction (s) | photos/s | model inputs/s | per view vs 1 view | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in figs["rows"]:
        ratio = r["per_view_ratio_to_1_view"]
        lines.append(f"| {r['views']} ({r['n_views']}) | {r['resolution']} px | {r['seconds']:.1f} | "
                     f"{r['photos_per_s']:.1f} | {r['inputs_per_s']:.1f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"cached `toptune` rerun, new process (default settings, {figs['default_classifier']}): "
                  f"{figs['cached_rerun_s']:.2f} s (classifier fit {figs['cached_rerun_fit_s']:.2f} s, accuracy "
                  f"{figs['cached_rerun_accuracy']:.3f})",
              f"cold `predict` of one photo, new process: {figs['cold_predict_s']:.2f} s"]
    return "\n".join(lines)
