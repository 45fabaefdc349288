"""Command-line command ``bench``: the benchmarks, one sub-command each, every one printing a table.

``bench first`` (a new dataset's first top-tune, to the first and the final model, ``bench.first``),
``bench engines`` (extraction, training and prediction speed, ``toptune_core.bench.run``), ``bench views`` (what
view sets and resolutions cost, ``bench.views``), ``bench labels`` (planted wrong labels, ``bench.labels``),
``bench ray`` (extraction here and on Ray side by side, ``bench.ray_vs_local``), ``bench versions`` (adding
photos and training again, ``bench.versions``) and ``bench field`` (a run's offline page in headless chromium,
``bench.field``). The older names (``bench --data ...``, ``bench-ray``, ``bench-views``, ``bench-labels``,
``bench-versions``, ``bench-first``, ``bench-field``) still work: ``new_names`` rewrites them.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from toptune_core.bench.ceiling import CPU_BATCH_SIZES, CUDA_BATCH_SIZES
from toptune_core.cli.common import add_command, feature_args, feature_cache, feature_settings, write_json
from toptune_core.config import Settings


def _timed_log() -> Callable[[str], None]:
    """A log that prints each line to stderr after the seconds since it was made."""
    start = time.perf_counter()
    return lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}", file=sys.stderr, flush=True)


def cmd_engines(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.run import run_bench
    from toptune_core.errors import ToptuneError

    if args.engine_only:
        return _engine_only(args, settings)
    if args.camera_images < 1 or args.naive_images < 1:
        raise ToptuneError("--camera-images and --naive-images must be at least 1.")
    start = time.perf_counter()
    report = run_bench(args.data, args.backbone, seed=args.seed, test_size=args.test_size,
                       camera_images=args.camera_images,
                       naive_images=args.naive_images, repeats=max(1, args.repeats),
                       batch_sizes=tuple(int(v) for v in args.batch_sizes.split(",")) if args.batch_sizes else None,
                       settings=settings, log=_timed_log())
    print(report.text())
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")
    write_json(args.json, report.figures, default=str)
    return 0


def _engine_only(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.engine_rate import engine_table, engine_vs_eager

    figs = engine_vs_eager(args.data, args.backbone, resolution=args.resolution, views=args.views, settings=settings,
                           repeats=max(1, args.repeats), log=_timed_log())
    print(engine_table(figs))
    write_json(args.json, figs)
    return 0


def cmd_first(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.first import bench_first, first_table

    start = time.perf_counter()
    figs = bench_first(args.data, log=_timed_log())
    print(first_table(figs))
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")
    write_json(args.json, figs, default=str)
    return 0


def cmd_labels(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from toptune_core.bench.labels import bench_labels, labels_table
    from toptune_core.bench.measure import load_average
    from toptune_core.data.dataset import load_dataset
    from toptune_core.data.duplicates import duplicate_groups
    from toptune_core.features.cache import get_features
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.leakage import reference_features
    from toptune_core.progress import TextProgressBar

    dataset = load_dataset(args.data)
    extractor = FeatureExtractor(args.backbone, settings=settings, **feature_settings(args))
    cache = feature_cache(settings)
    entry = get_features(dataset, extractor, cache, progress=TextProgressBar()).entry
    ok = np.asarray(entry.ok, dtype=bool)
    groups = duplicate_groups(reference_features(dataset, ok, cache=cache, extractor=extractor,
                                                 progress=TextProgressBar()))
    figures = bench_labels(dataset.subset(np.flatnonzero(ok)), entry.features, groups, per_class=args.per_class,
                           seeds=args.seeds, progress=TextProgressBar())
    figures.update(backbone=args.backbone, views_set=extractor.views, resolution=extractor.resolution,
                   load_average=load_average())
    print(f"\n{figures['planted']} wrong labels planted in {figures['n_photos']} photos ({args.per_class} of each "
          f"class given the next class), {args.seeds} seeds; {args.backbone}, views {extractor.views} at "
          f"{extractor.resolution} px; "
          f"load average {figures['load_average']}")
    print(labels_table(figures))
    write_json(args.json, figures)
    return 0


def cmd_ray(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.ray_vs_local import compare_where, where_table

    header, runs = compare_where(args.data, args.backbone, args.where.split(","), repeats=max(1, args.repeats),
                                 address=args.address or settings.ray_address, settings=settings,
                                 log=_timed_log())
    print("\n".join(header + ["", where_table(runs)]))
    write_json(args.json, {"header": header, "runs": [vars(r) for r in runs]})
    return 0


def cmd_views(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.views import bench_views, views_table

    figs = bench_views(args.data, args.backbone, view_sets=args.views.split(","),
                       resolutions=[None if r == "own" else int(r) for r in args.resolutions.split(",")],
                       repeats=args.repeats, log=_timed_log())
    print(views_table(figs))
    write_json(args.json, figs)
    return 0


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.versions import bench_versions, versions_table

    figs = bench_versions(args.data, args.backbone, views=args.views, classifier=args.classifier,
                          repeats=args.repeats, add=args.add, home=args.home, log=_timed_log())
    print(versions_table(figs))
    write_json(args.json, figs)
    return 0


def cmd_field(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.field import bench_field, report
    from toptune_core.cli.common import run_store
    from toptune_core.cli.predict import photo_paths

    photos = photo_paths(args.photos)[:args.limit]
    result = bench_field(args.run, photos, store=run_store(settings), settings=settings)
    print(report(result))
    write_json(args.json, result)
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("bench",)

#: The older command names and what they are now (``new_names``).
OLD_NAMES = {"bench-ray": "ray", "bench-views": "views", "bench-labels": "labels", "bench-versions": "versions",
             "bench-first": "first", "bench-field": "field"}


def new_names(argv: list[str]) -> list[str]:
    """``argv`` with an older benchmark command written the new way: ``bench-ray ...`` -> ``bench ray ...``, and
    ``bench --data ...`` (the engines' benchmark, before the benchmarks were grouped) -> ``bench engines ...``."""
    if argv and argv[0] in OLD_NAMES:
        return ["bench", OLD_NAMES[argv[0]], *argv[1:]]
    if len(argv) > 1 and argv[0] == "bench" and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        return ["bench", "engines", *argv[1:]]
    return argv


def _dataset_args(p: argparse.ArgumentParser, features: bool = False) -> None:
    """``--data``, ``--backbone`` and ``--json`` (and, with ``features``, ``--views`` and ``--resolution``)."""
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE

    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone name (default {DEFAULT_BACKBONE})")
    p.add_argument("--json", help="write the figures as JSON to this file")
    if features:
        feature_args(p)


def _add_engines(bench) -> None:
    p = add_command(bench, "engines", cmd_engines, "measure extraction, training and prediction speed; prints a table",
                    data=True)
    p.add_argument("--camera-images", type=int, default=64,
                   help="how many 12-megapixel camera JPEGs to make and time (default 64)")
    p.add_argument("--naive-images", type=int, default=256,
                   help="how many dataset photos the naive baseline reads (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each rate; the best is kept (default 3)")
    p.add_argument("--batch-sizes", help="batch sizes for the model-only ceiling, comma-separated "
                   f"(default {','.join(map(str, CPU_BATCH_SIZES))} on a CPU, "
                   f"{','.join(map(str, CUDA_BATCH_SIZES))} on CUDA)")
    p.add_argument("--engine-only", action="store_true",
                   help="only the engine a run uses (and the f32 one) against PyTorch eager f32's ceiling, per "
                        "backbone pass at the same input size (--views, --resolution), with the load average")


def _add_first(bench) -> None:
    f = add_command(bench, "first", cmd_first,
                    "the first top-tune of a dataset as a new process from an empty home: seconds to the first and "
                    "the final model, the engine's rate against PyTorch eager's ceiling; prints a table")
    f.add_argument("--data", required=True, help="dataset folder")
    f.add_argument("--json", help="write the figures as JSON to this file")


def _add_views(bench) -> None:
    v = add_command(bench, "views", cmd_views,
                    "time extraction with each view set and resolution, a cached rerun and a cold predict; a table")
    _dataset_args(v)
    v.add_argument("--views", default="1,flip,dihedral", help="view sets, comma-separated (default 1,flip,dihedral)")
    v.add_argument("--resolutions", default="own", help="input sides, comma-separated; 'own' is the backbone's own "
                                                        "(default own)")
    v.add_argument("--repeats", type=int, default=3, help="timed runs of each process; the best is kept (default 3)")


def _add_labels(bench) -> None:
    b = add_command(bench, "labels", cmd_labels,
                    "plant wrong labels (in memory) and count how many each ranking finds; prints a table")
    _dataset_args(b, features=True)
    b.add_argument("--per-class", type=int, default=5, help="photos of each class given a wrong label (default 5)")
    b.add_argument("--seeds", type=int, default=10, help="planted sets, one per seed (default 10)")


def _add_ray(bench) -> None:
    e = add_command(bench, "ray", cmd_ray,
                    "time feature extraction on this machine and on Ray, into fresh caches; prints a table")
    _dataset_args(e)
    e.add_argument("--where", default="local,ray,ray-2x1",
                   help="comma-separated: local, ray (a local runtime or --address), ray-2x1 (a simulated cluster of two "
                        "1-CPU nodes on this machine) (default all three)")
    e.add_argument("--address", help="Ray cluster (default $TOPTUNE_RAY_ADDRESS; else a local Ray runtime)")
    e.add_argument("--repeats", type=int, default=1, help="runs of each engine, alternating (default 1)")


def _add_versions(bench) -> None:
    w = add_command(bench, "versions", cmd_versions,
                    "time adding 5 photos to a dataset and training again (only new photos are read); a table")
    _dataset_args(w)
    w.add_argument("--views", help="view set (default: the default, as the Top-tune page)")
    w.add_argument("--classifier", help="top classifier (default: the default)")
    w.add_argument("--repeats", type=int, default=3, help="rounds of 5 photos added (default 3)")
    w.add_argument("--add", help="a folder of class folders with the new photos (default: mirrored dataset photos)")
    w.add_argument("--home", help="a data folder to keep between benchmarks: the first extraction is done once "
                                  "(default: a temporary one)")


#: The benchmarks, in the order ``bench --help`` lists them: each adds its parser to ``bench``'s sub-commands.
def _add_field(bench) -> None:
    p = add_command(bench, "field", cmd_field, "time a run's offline page in headless chromium at 1, 2 and 8 views, "
                                               "and measure its files")
    p.add_argument("--run", required=True, help="a top-tuned run's id")
    p.add_argument("--limit", type=int, default=6, help="photos to time per view count, the first a warm-up "
                                                         "(default 6)")
    p.add_argument("--json", help="write the measurements as JSON to this file")
    p.add_argument("photos", nargs="+", help="photo files and/or folders")


#: A new benchmark (e.g. ``bench first``) is a ``cmd_`` handler and an ``_add_`` function above, and a row here.
BENCHMARKS = (_add_first, _add_engines, _add_views, _add_labels, _add_ray, _add_versions, _add_field)


def add_parsers(sub) -> None:
    names = ", ".join(f.__name__.removeprefix("_add_") for f in BENCHMARKS)
    bench = sub.add_parser("bench", help=f"benchmarks, each printing a table: {names}",
                           description="Benchmarks, each printing a table. The older names bench-ray, bench-views, "
                                       "bench-labels, bench-versions, bench-first, bench-field and 'bench --data "
                                       "...' (bench engines) still work.")
    commands = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for add in BENCHMARKS:
        add(commands)
