"""Command-line command ``extract``: a dataset's features into the feature cache, here or on a Ray cluster.

``python -m toptune_core extract --data DIR --backbone NAME [--engine local|ray] [--address ADDRESS]``
fills the cache entry a ``toptune`` run reads (``features.cache.get_features``: same key, same lock,
written atomically), so a ``toptune`` on the same photos afterwards is a cache hit. ``--engine ray``
runs on Ray (``features.distributed``): the cluster at ``--address`` (``auto``, ``host:port``,
``ray://host:port``; default ``$TOPTUNE_RAY_ADDRESS``), or else a local Ray runtime.
"""

from __future__ import annotations

import argparse

from toptune_core.cli.common import add_command, feature_cache, feature_args, feature_settings, write_json
from toptune_core.config import Settings


def make_extractor(args: argparse.Namespace, settings: Settings):
    from toptune_core.errors import ToptuneError

    if args.engine == "local":
        if args.address or args.actors:
            raise ToptuneError("--address and --actors go with --engine ray.")
        from toptune_core.features.extractor import FeatureExtractor

        return FeatureExtractor(args.backbone, batch_size=args.batch_size, settings=settings, **feature_settings(args))
    from toptune_core.features.distributed import RayFeatureExtractor

    return RayFeatureExtractor(args.backbone, address=args.address or settings.ray_address, actors=args.actors,
                               batch_size=args.batch_size, settings=settings, stall_seconds=args.stall_timeout,
                               **feature_settings(args))


def cmd_extract(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.data.dataset import load_dataset
    from toptune_core.features.cache import get_features
    from toptune_core.progress import TextProgressBar

    dataset = load_dataset(args.data)
    extractor = make_extractor(args, settings)
    cache = feature_cache(settings)
    fs = get_features(dataset, extractor, cache, progress=TextProgressBar())
    entry = fs.entry
    n_ok = int(entry.ok.sum())
    where = getattr(extractor, "last_plan_", None)
    if fs.cache_hit:
        print(f"features of {n_ok} photos already in the cache (their extraction took {entry.extract_seconds:.1f} s); "
              "nothing to do")
    else:
        print(f"extracted features of {n_ok} of {len(dataset)} photos with {args.backbone} in "
              f"{entry.extract_seconds:.1f} s ({n_ok / entry.extract_seconds:.1f} photos/s), "
              f"engine {args.engine}" + (f" on {extractor.connected_to_}" if where else ""))
        if where:
            print(f"  {where.describe()}; first features after {extractor.first_batch_seconds_:.1f} s")
    print(f"cache entry: {cache.path(entry.key)}")
    for rel, reason in entry.errors[:20]:
        print(f"  unreadable: {rel}: {reason}")
    write_json(args.json, {"cache_key": entry.key, "cache_hit": fs.cache_hit, "engine": args.engine,
                           "n_images": len(dataset), "n_features": n_ok, "unreadable_images": len(entry.errors),
                           "extract_seconds": entry.extract_seconds, "seconds": fs.seconds,
                           "plan": where.describe() if where else None})
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("extract",)


def add_parsers(sub) -> None:
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE

    p = add_command(sub, "extract", cmd_extract, "extract a dataset's features into the cache (here or on Ray)")
    p.add_argument("--data", required=True, help="dataset folder: one sub-folder of photos per class")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone name (default {DEFAULT_BACKBONE})")
    feature_args(p)
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data tasks and an actor pool")
    p.add_argument("--address", help="Ray cluster to use: auto, host:port or ray://host:port (default "
                   "$TOPTUNE_RAY_ADDRESS; without one a local Ray runtime starts)")
    p.add_argument("--stall-timeout", type=float, default=120.0,
                   help="Ray: stop with one line when no batch has come back for this many seconds (default 120)")
    p.add_argument("--actors", type=int, help="Ray: number of model actors (default: one per GPU, else one per CPU)")
    p.add_argument("--batch-size", type=int, help="photos per batch (default: chosen for the device)")
    p.add_argument("--json", help="write the result as JSON to this file")
