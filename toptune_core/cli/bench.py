"""Command-line commands ``bench`` (its flags, and printing the benchmark's table, ``toptune_core.bench.run``) and
``bench-ray`` (extraction here and on Ray side by side, ``toptune_core.bench.ray_vs_local``)."""

from __future__ import annotations

import argparse
import sys
import time

from toptune_core.bench.ceiling import CPU_BATCH_SIZES, CUDA_BATCH_SIZES
from toptune_core.cli.common import add_command, write_json
from toptune_core.config import Settings


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.run import run_bench
    from toptune_core.errors import ToptuneError

    if args.camera_images < 1 or args.naive_images < 1:
        raise ToptuneError("--camera-images and --naive-images must be at least 1.")
    start = time.perf_counter()
    if args.engine_only:
        return _engine_only(args, settings, start)
    report = run_bench(args.data, args.backbone, seed=args.seed, test_size=args.test_size,
                       camera_images=args.camera_images,
                       naive_images=args.naive_images, repeats=max(1, args.repeats),
                       batch_sizes=tuple(int(v) for v in args.batch_sizes.split(",")) if args.batch_sizes else None,
                       settings=settings,
                       log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}", file=sys.stderr,
                                              flush=True))
    print(report.text())
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")
    write_json(args.json, report.figures, default=str)
    return 0


def _engine_only(args: argparse.Namespace, settings: Settings, start: float) -> int:
    from toptune_core.bench.engine_rate import engine_table, engine_vs_eager

    figs = engine_vs_eager(args.data, args.backbone, resolution=args.resolution, views=args.views, settings=settings,
                           repeats=max(1, args.repeats),
                           log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}", file=sys.stderr,
                                                  flush=True))
    print(engine_table(figs))
    write_json(args.json, figs)
    return 0


def cmd_bench_ray(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.ray_vs_local import compare_where, where_table

    start = time.perf_counter()
    header, runs = compare_where(args.data, args.backbone, args.where.split(","), repeats=max(1, args.repeats),
                                 address=args.address or settings.ray_address, settings=settings,
                                 log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}",
                                                        file=sys.stderr, flush=True))
    print("\n".join(header + ["", where_table(runs)]))
    write_json(args.json, {"header": header, "runs": [vars(r) for r in runs]})
    return 0


def cmd_bench_views(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.views import bench_views, views_table

    start = time.perf_counter()
    figs = bench_views(args.data, args.backbone, view_sets=args.views.split(","),
                       resolutions=[None if r == "own" else int(r) for r in args.resolutions.split(",")],
                       repeats=args.repeats, log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}",
                                                                    file=sys.stderr, flush=True))
    print(views_table(figs))
    write_json(args.json, figs)
    return 0


def cmd_bench_versions(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.versions import bench_versions, versions_table

    start = time.perf_counter()
    figs = bench_versions(args.data, args.backbone, views=args.views, classifier=args.classifier,
                          repeats=args.repeats, add=args.add, home=args.home,
                          log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}", file=sys.stderr,
                                                 flush=True))
    print(versions_table(figs))
    write_json(args.json, figs)
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("bench", "bench-ray", "bench-views", "bench-versions")


def add_parsers(sub) -> None:
    p = add_command(sub, "bench", cmd_bench, "measure extraction, training and prediction speed; prints a table",
                    data=True)
    p.add_argument("--camera-images", type=int, default=64,
                   help="how many 12-megapixel camera JPEGs to make and time (default 64)")
    p.add_argument("--naive-images", type=int, default=256,
                   help="how many dataset photos the naive baseline reads (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each rate; the best is kept (default 3)")
    p.add_argument("--engine-only", action="store_true",
                   help="only the engine a run uses (and the f32 one) against PyTorch eager f32's ceiling, per "
                        "backbone pass at the same input size (--views, --resolution), with the load average")
    p.add_argument("--batch-sizes", help="batch sizes for the model-only ceiling, comma-separated "
                   f"(default {','.join(map(str, CPU_BATCH_SIZES))} on a CPU, "
                   f"{','.join(map(str, CUDA_BATCH_SIZES))} on CUDA)")

    e = add_command(sub, "bench-ray", cmd_bench_ray,
                    "time feature extraction on this machine and on Ray, into fresh caches; prints a table")
    e.add_argument("--data", required=True, help="dataset folder")
    e.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone name")
    e.add_argument("--where", default="local,ray,ray-2x1",
                   help="comma-separated: local, ray (a local runtime or --address), ray-2x1 (a simulated cluster of two "
                        "1-CPU nodes on this machine) (default all three)")
    e.add_argument("--address", help="Ray cluster (default $TOPTUNE_RAY_ADDRESS; else a local Ray runtime)")
    e.add_argument("--repeats", type=int, default=1, help="runs of each engine, alternating (default 1)")
    e.add_argument("--json", help="write the figures as JSON to this file")

    v = add_command(sub, "bench-views", cmd_bench_views,
                    "time extraction with each view set and resolution, a cached rerun and a cold predict; a table")
    v.add_argument("--data", required=True, help="dataset folder")
    v.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone name")
    v.add_argument("--views", default="1,flip,dihedral", help="view sets, comma-separated (default 1,flip,dihedral)")
    v.add_argument("--resolutions", default="own", help="input sides, comma-separated; 'own' is the backbone's own "
                                                        "(default own)")
    v.add_argument("--repeats", type=int, default=3, help="timed runs of each process; the best is kept (default 3)")
    v.add_argument("--json", help="write the figures as JSON to this file")

    w = add_command(sub, "bench-versions", cmd_bench_versions,
                    "time adding 5 photos to a dataset and training again (only new photos are read); a table")
    w.add_argument("--data", required=True, help="dataset folder")
    w.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone name")
    w.add_argument("--views", help="view set (default: the default, as the Top-tune page)")
    w.add_argument("--classifier", help="top classifier (default: the default)")
    w.add_argument("--repeats", type=int, default=3, help="rounds of 5 photos added (default 3)")
    w.add_argument("--add", help="a folder of class folders with the new photos (default: mirrored dataset photos)")
    w.add_argument("--home", help="a data folder to keep between benchmarks: the first extraction is done once "
                                  "(default: a temporary one)")
    w.add_argument("--json", help="write the figures as JSON to this file")
