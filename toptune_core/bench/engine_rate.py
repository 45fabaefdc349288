"""The engine against PyTorch eager, per backbone pass at the same input size, in one run: what
``python -m toptune_core bench --engine-only`` prints, and what a first-run benchmark can call
(``engine_vs_eager``).

The engine is the one a run would use (``features.engines.choose``: OpenVINO bf16 where the CPU has bf16, else
ONNX Runtime f32), with the f32 engine beside it when they differ. Its rate is the extraction's, JPEG files to
features (``FeatureExtractor.transform``: decoding, resizing, cutting the views, the engine), counted in backbone
passes (photos x views); its graph is exported and checked before the clock starts. PyTorch eager's ceiling is
the f32 model alone on random tensors at the same input size, at its best batch size and way of using the CPUs
(``bench.ceiling.model_ceiling``). Each is the best of ``repeats`` runs, alternating, and the load average is
reported before and after. Everything is written to a temporary data folder, removed at the end.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.bench.measure import load_average
from toptune_core.config import Settings

TARGET_VS_EAGER = 2.8  # issue 25: the extraction per pass against PyTorch eager f32's ceiling at the same input size
CEILING_BATCH_SIZES = (4, 16)


def engine_vs_eager(data: str | Path, backbone: str = DEFAULT_BACKBONE, *, resolution: Optional[int] = None,
                    views: Optional[str] = None, settings: Optional[Settings] = None, repeats: int = 2,
                    compare_f32: bool = True, log: Callable[[str], None] = print) -> dict:
    """Passes/s of the engine a run would use (and of the f32 engine, when that is another), PyTorch eager f32's
    ceiling at the same input size, their ratio, and the load (JSON-ready; see the module docstring)."""
    home = Path(tempfile.mkdtemp(prefix="toptune-engine-bench-"))
    try:
        return _measure(data, backbone, resolution, views, dataclasses.replace(settings or Settings.from_env(),
                                                                               home=home),
                        max(1, repeats), compare_f32, log)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _measure(data, backbone: str, resolution: Optional[int], views: Optional[str], settings: Settings, repeats: int,
             compare_f32: bool, log: Callable[[str], None]) -> dict:
    from toptune_core.bench.ceiling import model_ceiling
    from toptune_core.data.dataset import load_dataset
    from toptune_core.features.extractor import FeatureExtractor

    load_before = load_average()
    dataset = load_dataset(data)
    chosen = FeatureExtractor(backbone, settings=settings, views=views, resolution=resolution)
    extractors = [chosen]
    if compare_f32 and chosen.engine_precision not in ("f32", "f16"):
        extractors.append(FeatureExtractor(backbone, settings=settings, views=views, resolution=resolution,
                                           precision="f32"))
    eager = FeatureExtractor(backbone, settings=settings, views="1", resolution=chosen.resolution, engine="torch",
                             precision="f32")  # (on CUDA: the GPU's ceiling, fp16 autocast, as the engine there)
    for extractor in extractors:
        extractor._model = eager.model  # one loaded PyTorch model for the exports, the checks and the ceiling
        log(f"loading {extractor.plan().describe()} (exporting and checking its graph)")
        extractor.load_engine(log)
    log(f"PyTorch eager f32 ceiling at {chosen.resolution} px, batch sizes {list(CEILING_BATCH_SIZES)}")
    ceiling = model_ceiling(eager, list(CEILING_BATCH_SIZES))
    runs = {i: [] for i in range(len(extractors))}
    ceiling_runs = []
    for r in range(repeats):
        for i, extractor in enumerate(extractors):
            log(f"extraction of {len(dataset)} photos with {extractor.plan().describe()} ({r + 1} of {repeats})")
            start = time.perf_counter()
            result = extractor.transform(dataset.paths)
            runs[i].append(int(result.ok.sum()) * result.features.shape[1] / (time.perf_counter() - start))
        ceiling_runs.append(ceiling.again())
    best_ceiling = max(ceiling_runs)
    engines = [{"engine": e.engine_name, "precision": e.engine_precision, "engine_note": e.engine_note,
                "plan": e.plan().describe(), "passes_per_s": max(runs[i]), "runs_passes_per_s": runs[i],
                "photos_per_s": max(runs[i]) / e.n_views, "vs_eager": max(runs[i]) / best_ceiling}
               for i, e in enumerate(extractors)]
    return {"backbone": backbone, "data": str(dataset.root), "photos": len(dataset), "resolution": chosen.resolution,
            "views": chosen.views, "n_views": chosen.n_views, "engines": engines,
            "eager_ceiling_passes_per_s": best_ceiling, "eager_ceiling_runs": ceiling_runs,
            "eager_ceiling_setting": f"batch {ceiling.batch_size}, {ceiling.mode}", "target_vs_eager": TARGET_VS_EAGER,
            "met": engines[0]["vs_eager"] >= TARGET_VS_EAGER, "load_before": load_before,
            "load_after": load_average()}


def engine_table(figs: dict) -> str:
    """The figures as a few lines and a Markdown table."""
    from toptune_core.bench.report import markdown_table
    from toptune_core.features.engines import describe

    size = f"{figs['resolution']} px"
    cells = [("measure", "passes/s", "photos/s", "vs PyTorch eager f32", "target", "met")]
    for i, e in enumerate(figs["engines"]):
        chosen = i == 0
        cells.append((f"extraction, {describe(e['engine'], precision=e['precision'])} at {size}"
                      + (" (the engine runs use)" if chosen else ""), f"{e['passes_per_s']:.1f}",
                      f"{e['photos_per_s']:.1f}", f"{e['vs_eager']:.2f}x",
                      f">= {figs['target_vs_eager']:g}x" if chosen else "",
                      ("yes" if figs["met"] else "NO") if chosen else ""))
    cells.append((f"PyTorch eager f32 ceiling at {size} ({figs['eager_ceiling_setting']})",
                  f"{figs['eager_ceiling_passes_per_s']:.1f}", "", "1.00x", "", ""))
    lines = [f"engine vs PyTorch eager: {figs['backbone']} on {figs['data']} ({figs['photos']} photos, views "
             f"'{figs['views']}' = {figs['n_views']} passes a photo, {size})",
             f"load average (1/5/15 min) before: {figs['load_before']}; after: {figs['load_after']}", "",
             markdown_table(cells), ""]
    lines += [f"- {describe(e['engine'], precision=e['precision'])}: {e['plan']}; {e['engine_note']}; runs "
              + ", ".join(f"{r:.1f}" for r in e["runs_passes_per_s"]) + " passes/s" for e in figs["engines"]]
    lines.append("- PyTorch eager ceiling runs " + ", ".join(f"{r:.1f}" for r in figs["eager_ceiling_runs"])
                 + " passes/s (the model alone on random tensors; extraction: JPEG files to features, decoding "
                   "included, no cache write); best of each")
    return "\n".join(lines)
