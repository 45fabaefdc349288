"""The first run, as a new user meets it: seconds to the first model and to the final model.

``python -m toptune_core bench-first --data DIR`` runs ``python -m toptune_core
toptune --data DIR --json`` as a new process with the default settings from an
empty home (runs, feature cache and exported graph all new: what a first user
meets) and, again, with only the exported graph kept (every later dataset on
this machine), reading the time of the "first model ready" line and of the end
of the process. From the run's feature-cache entry it takes the engine's rate
(the final stage extracts the other views alone: photos/s and backbone passes/s
at the run's input size), and measures PyTorch eager f32's model-only ceiling at
the same input size in this process afterwards (``bench.ceiling``), so the
ratio compares two rates of one machine in one run. The machine's load is
printed with them: rates under load are lower and noisier.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from toptune_core.bench.engine_rate import TARGET_VS_EAGER
from toptune_core.bench.measure import OtherCpuUse, load_average

TARGET_FIRST_S = 15.0
TARGET_FINAL_S = 60.0


def _one_process(data: str, home: Path, log: Callable[[str], None]) -> dict:
    """One ``toptune`` process: seconds from its start to the first-model line and to its end, and its JSON."""
    out = home / "run.json"
    env = {k: v for k, v in os.environ.items() if k != "TOPTUNE_GRAPHS"}  # the graphs too live in the new home
    env.update(TOPTUNE_HOME=str(home), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "toptune_core", "toptune", "--data", data, "--json", str(out)]
    start = time.perf_counter()
    first: Optional[float] = None
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("first model ready") and first is None:
                first = time.perf_counter() - start
                log(f"first model at {first:.1f} s")
    final = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"toptune exited with {proc.returncode}")
    summary = json.loads(out.read_text())
    return {"first_s": first, "final_s": final, "summary": summary, "entry": _newest_entry(home)}


def _newest_entry(home: Path) -> dict:
    """The meta of the run's feature-cache entry at the run's resolution (the one with the most views)."""
    metas = [json.loads(p.read_text()) for p in (home / "features").glob("*/meta.json")]
    return max(metas, key=lambda m: (int(m.get("n_views") or 0), m["data_config"]["input_size"][-1]))


def _engine_rates(entry: dict) -> dict:
    """Photos/s and passes/s of the final stage's extraction alone (its views of every photo)."""
    stages = entry.get("stage_seconds") or []
    n = sum(entry["ok"])
    if len(stages) >= 2:
        views = stages[-1][0] - stages[-2][0]
        seconds = stages[-1][1]
    else:
        views, seconds = int(entry.get("n_views") or 1), float(entry["extract_seconds"])
    return {"photos_per_s": n / seconds, "passes_per_s": n * views / seconds, "views": views, "seconds": seconds,
            "photos": n}


def _eager_ceiling(resolution: int, log) -> float:
    """PyTorch eager f32, model alone, at ``resolution``: passes/s (best batch size and way of using the CPUs)."""
    from toptune_core.bench.ceiling import CPU_BATCH_SIZES, model_ceiling
    from toptune_core.features.extractor import FeatureExtractor

    extractor = FeatureExtractor(engine="torch", resolution=resolution, views="1")
    log("measuring PyTorch eager's ceiling")
    return model_ceiling(extractor, list(CPU_BATCH_SIZES), seconds=2.0).rate


def bench_first(data: str, *, log: Callable[[str], None] = lambda line: None) -> dict:
    """Both first runs (empty home; graph kept), the engine's rate and the eager ceiling; figures for the table."""
    figs: dict = {"data": data, "load_before": load_average()}
    others = OtherCpuUse()
    root = Path(tempfile.mkdtemp(prefix="toptune-bench-first-"))
    try:
        log("first run from an empty home")
        empty = _one_process(data, root / "empty", log)
        kept = root / "graph-kept"
        kept.mkdir()
        for folder in ("graphs",):
            if (root / "empty" / folder).is_dir():
                shutil.copytree(root / "empty" / folder, kept / folder)
        log("first run with the exported graph kept")
        warm = _one_process(data, kept, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figs["runs"] = {"empty home": empty, "graph kept": warm}
    entry = warm["entry"]
    figs["engine"] = {k: entry.get(k) for k in ("engine", "engine_note", "precision")}
    figs["resolution"] = int(entry["data_config"]["input_size"][-1])
    figs["rates"] = _engine_rates(entry)
    figs["eager_passes_per_s"] = _eager_ceiling(figs["resolution"], log)
    figs["load_after"] = load_average()
    figs["other_cpus"] = others.result()
    return figs


def first_table(figs: dict) -> str:
    """The printed report."""
    rates, eager = figs["rates"], figs["eager_passes_per_s"]
    ratio = rates["passes_per_s"] / eager
    engine = figs["engine"]
    lines = [f"toptune bench-first: {figs['data']}, default settings, {figs['resolution']} px",
             f"engine: {engine.get('engine')}" + (f", {engine['precision']}" if engine.get("precision") else "")
             + (f" ({engine['engine_note']})" if engine.get("engine_note") else ""),
             f"load average (1/5/15 min) before: {figs['load_before']}; after: {figs['load_after']}"]
    if figs.get("other_cpus"):
        lines.append(f"other processes' CPU use during the benchmark: {figs['other_cpus'][0]:.2f} CPUs on average")
    lines += ["", "| measure | value | target | met |", "|---|---|---|---|"]
    for name, run in figs["runs"].items():
        s = run["summary"]
        first = run["first_s"]
        lines.append(f"| first model, {name} (new process to the first-model line) | "
                     + (f"{first:.1f} s (accuracy {s['stages'][0]['accuracy']:.3f})" if first else "none (one stage)")
                     + f" | <= {TARGET_FIRST_S:.0f} s | {'yes' if first and first <= TARGET_FIRST_S else 'NO'} |")
        lines.append(f"| final model, {name} (new process to its end) | {run['final_s']:.1f} s (accuracy "
                     f"{s['accuracy']:.3f}) | <= {TARGET_FINAL_S:.0f} s | "
                     f"{'yes' if run['final_s'] <= TARGET_FINAL_S else 'NO'} |")
    lines += [f"| engine, final stage ({rates['views']} views of {rates['photos']} photos in {rates['seconds']:.1f} s) "
              f"| {rates['photos_per_s']:.1f} photos/s, {rates['passes_per_s']:.1f} passes/s | | |",
              f"| PyTorch eager f32 ceiling, model alone, {figs['resolution']} px, same run | {eager:.1f} passes/s | | |",
              f"| engine per pass / eager ceiling | {ratio:.2f}x | >= {TARGET_VS_EAGER}x | "
              f"{'yes' if ratio >= TARGET_VS_EAGER else 'NO'} |"]
    return "\n".join(lines)
