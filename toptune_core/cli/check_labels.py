"""Command-line command ``check-labels``: the training photos whose label looks wrong, most suspect first.

``python -m toptune_core check-labels --data DIR [--backbone NAME] [--views V] [--top N] [--json OUT]``
reads the folder as the workspace's dataset version (its edits applied, ``data.versions``, as ``toptune``
reads it; photos reviewed there are not listed again) and the photos' features (from the cache, extracted with
a progress bar on a miss), ranks the photos the out-of-fold model disagrees with (``trust.labels``) and prints
them as a table: score, given class, suggested class, path. ``--json`` writes every suspect,
``{"suspects": [{"path", "given", "suggested", "score"}, ...]}`` most suspect first, with what the check
looked at.

``python -m toptune_core bench labels`` (``cli.bench``) plants wrong labels and counts how many each ranking finds.
"""

from __future__ import annotations

import argparse

from toptune_core.cli.common import DATA_HELP, add_command, feature_args, feature_cache, feature_settings, write_json
from toptune_core.config import Settings


def suspects_table(suspects: list, top: int) -> str:
    """The first ``top`` suspects (all with 0) as an aligned text table."""
    shown = suspects if top <= 0 else suspects[:top]
    rows = [("#", "score", "given", "suggested", "photo")]
    rows += [(str(i), f"{s.score:.3f}", s.given, s.suggested, s.path) for i, s in enumerate(shown, 1)]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(r[c].ljust(widths[c]) if c else r[c].rjust(widths[c]) for c in range(4))
                     + "  " + r[4] for r in rows)


def cmd_check_labels(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.data.versions import DatasetVersions, read_version
    from toptune_core.features.extractor import FeatureExtractor
    from toptune_core.progress import TextProgressBar
    from toptune_core.trust.labels import check_labels

    dataset = read_version(settings.home, args.data)
    reviewed = DatasetVersions(settings.home, args.data).reviewed
    extractor = FeatureExtractor(args.backbone, settings=settings, **feature_settings(args))
    result = check_labels(dataset, extractor=extractor, seed=args.seed, cache=feature_cache(settings),
                          skip=reviewed, progress=TextProgressBar())
    features = ("features from the cache" if result.cache_hit
                else f"features extracted in {result.extract_seconds:.1f} s")
    print(f"\nchecked the labels of {result.n_checked} of {result.n_photos} photos ({result.backbone}, views "
          f"{result.views} at {result.resolution} px; {features}; out-of-fold check {result.check_seconds:.1f} s)")
    for rel, reason in result.unreadable[:20]:
        print(f"  unreadable, not checked: {rel}: {reason}")
    if not result.suspects:
        print("no photo to check: the out-of-fold model agrees with every label")
    else:
        estimate = ("" if result.n_likely_wrong is None
                    else f"; confident learning estimates {result.n_likely_wrong} of them are wrong")
        print(f"{len(result.suspects)} photos to check, most suspect first{estimate}")
        print(suspects_table(result.suspects, args.top))
        if 0 < args.top < len(result.suspects):
            print(f"... and {len(result.suspects) - args.top} more (--top 0 shows all; --json writes all)")
    write_json(args.json, result.as_dict())
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("check-labels",)


def add_parsers(sub) -> None:
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE

    p = add_command(sub, "check-labels", cmd_check_labels,
                    "list the training photos whose label looks wrong, most suspect first")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone name (default {DEFAULT_BACKBONE})")
    feature_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    p.add_argument("--top", type=int, default=30, help="suspects printed (default 30; 0: all)")
    p.add_argument("--json", help="write every suspect as JSON to this file")
