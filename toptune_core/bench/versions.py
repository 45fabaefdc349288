"""``python -m toptune_core bench-versions``: what "add field photos, train again" costs, in one table.

In a temporary data folder (nothing touches the user's runs, cache or photos): the dataset is top-tuned once
with the chosen settings (the first extraction, timed for context); then, ``repeats`` times, 5 photos new to
the cache are added to the dataset's version (``data.versions``) and the same settings are trained again
(``experiment.run_toptuning``, the dashboard's "Train again"). Each "add + train again" is timed from the
``add_photos`` call (which reads every photo) to the recorded run, and the run says how many photos the
backbone read (the feature cache reuses every photo whose content it has, ``features.cache``).

The 5 new photos: by default photos of the dataset mirrored left to right and saved again as JPEG (new bytes,
so new to the cache; a mirrored leaf is still a leaf of its class), a different 5 each round; ``--add DIR``
takes real new photos from a folder of class folders instead (5 per round, in order).
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from toptune_core.bench.measure import load_average
from toptune_core.bench.report import markdown_table
from toptune_core.config import Settings

PHOTOS_PER_ROUND = 5
TARGET_TRAIN_AGAIN_S = 5.0


def _mirrored(dataset, start: int) -> list[tuple[str, bytes, str]]:
    """``PHOTOS_PER_ROUND`` photos of ``dataset`` from ``start`` (spread over the classes), mirrored:
    ``(name, JPEG bytes, class)``."""
    from PIL import ImageOps

    from toptune_core.data.images import load_rgb

    step = max(1, len(dataset) // PHOTOS_PER_ROUND)
    out = []
    for k in range(PHOTOS_PER_ROUND):
        i = (start + k * step) % len(dataset)
        buf = io.BytesIO()
        ImageOps.mirror(load_rgb(dataset.paths[i])).save(buf, "JPEG", quality=92)
        out.append((f"mirrored-{dataset.paths[i].name}", buf.getvalue(), dataset.classes[dataset.labels[i]]))
    return out


def _from_folder(folder: str, start: int) -> list[tuple[str, bytes, str]]:
    from toptune_core.data.dataset import load_dataset

    given = load_dataset(folder, min_classes=1)
    chosen = list(range(start, start + PHOTOS_PER_ROUND))
    if chosen[-1] >= len(given):
        from toptune_core.errors import ToptuneError

        raise ToptuneError(f"'{folder}' has {len(given)} photos; {len(given) // PHOTOS_PER_ROUND} round(s) of "
                           f"{PHOTOS_PER_ROUND} at most. Use fewer --repeats.")
    return [(given.paths[i].name, given.paths[i].read_bytes(), given.classes[given.labels[i]]) for i in chosen]


def bench_versions(data: str, backbone: str, *, views: Optional[str] = None, classifier: Optional[str] = None,
                   repeats: int = 3, add: Optional[str] = None, home: Optional[str] = None,
                   log: Callable[[str], None] = lambda line: None) -> dict:
    """The figures (JSON-ready): the first run, and one row per "add 5 photos + train again" round. ``home``: a
    data folder kept between benchmarks (the first extraction is then done once; every round still adds photos
    new to its cache); default a temporary one."""
    from toptune_core.data.dataset import load_dataset
    from toptune_core.data.versions import DatasetVersions
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.runs.store import RunStore

    dataset = load_dataset(data)
    kept = home is not None
    home = Path(home).expanduser() if kept else Path(tempfile.mkdtemp(prefix="toptune-bench-versions-"))
    try:
        settings = Settings.from_env({**os.environ, "TOPTUNE_HOME": str(home)})
        extractor = FeatureExtractor(backbone, views=views, settings=settings)
        extractor.load_engine()  # the engine's start is not extraction time
        store, cache = RunStore(home), FeatureCache(settings=settings)
        kwargs = dict(backbone=backbone, classifier=classifier, views=extractor.views, store=store, cache=cache,
                      extractor=extractor)
        log(f"first run: {len(dataset)} photos x {extractor.n_views} view(s), extracted (not the measure)")
        start = time.perf_counter()
        first = run_toptuning(dataset.root, **kwargs)
        first_s = time.perf_counter() - start
        versions = DatasetVersions(home, dataset.root)
        rounds = []
        for r in range(max(1, repeats)):
            done = len(versions.all_edits)  # photos added by earlier rounds (of earlier benchmarks too, in ``home``)
            photos = _from_folder(add, r * PHOTOS_PER_ROUND) if add else _mirrored(dataset, done + 1)
            log(f"round {r + 1}: add {len(photos)} photos, train again")
            start = time.perf_counter()
            for name, blob, label in photos:
                versions.add_photos([(name, blob)], label)
            run = run_toptuning(dataset.root, **kwargs)
            seconds = time.perf_counter() - start
            entry = cache.load(cache.key(versions.dataset().fingerprint(), extractor.cache_identity))
            t = run.timings
            rounds.append({"seconds": seconds, "photos": run.params["n_images"],
                           "extracted": entry.meta.get("n_extracted") if entry else None,
                           "features_s": t.get("extract_seconds"), "fit_s": t.get("fit_seconds"),
                           "run_total_s": t.get("total_seconds"), "accuracy": run.accuracy,
                           "changes": run.params["version"]["changes"]})
        return {"backbone": backbone, "views": extractor.views, "classifier": first.classifier,
                "engine": extractor.engine_name, "dataset": str(dataset.root), "n_photos": len(dataset),
                "first_run_s": first_s, "first_accuracy": first.accuracy,
                "first_cache_hit": bool(first.timings.get("cache_hit")), "rounds": rounds,
                "load_average": load_average(), "cpus": os.cpu_count()}
    finally:
        if not kept:
            shutil.rmtree(home, ignore_errors=True)


def versions_table(figs: dict) -> str:
    """The table ``bench-versions`` prints, with its header."""
    header = [f"bench-versions: {figs['backbone']} ({figs['engine']}), views {figs['views']}, classifier "
              f"{figs['classifier']}; {figs['n_photos']} photos in {figs['dataset']}; {figs['cpus']} CPU(s), load "
              f"average after: {figs['load_average']}",
              f"first run ({'features from the kept cache' if figs.get('first_cache_hit') else 'extracts every photo'}"
              f"): {figs['first_run_s']:.1f} s, accuracy {figs['first_accuracy']:.3f}"]
    cells = [("round", "photos", "read by the backbone", "features (s)", "classifier fit (s)",
              "add 5 + train again (s)", f"target < {TARGET_TRAIN_AGAIN_S:g} s", "accuracy")]
    for i, r in enumerate(figs["rounds"], 1):
        cells.append((str(i), str(r["photos"]), str(r["extracted"]), f"{r['features_s']:.2f}", f"{r['fit_s']:.2f}",
                      f"{r['seconds']:.2f}", "yes" if r["seconds"] < TARGET_TRAIN_AGAIN_S else "NO",
                      f"{r['accuracy']:.3f}"))
    median = statistics.median(r["seconds"] for r in figs["rounds"])
    return "\n".join(header + ["", markdown_table(cells), "", f"median add 5 + train again: {median:.2f} s"])
