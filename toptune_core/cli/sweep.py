"""Command-line command ``sweep``: every backbone x top classifier on one dataset, one table.

``python -m toptune_core sweep --data DIR [--test-data DIR] [--backbones A,B] [--classifiers X,Y] [--seeds 0,1]``
runs ``sweep.run_sweep`` (each backbone's features extracted once, then from
the cache), records every combination as a run, and prints one table with the
best trade-offs between accuracy and training time marked (the Pareto front,
as on the Compare page). With several ``--seeds`` it repeats every
combination on each seed's split and adds a table of means over the seeds.
"""

from __future__ import annotations

import argparse

from toptune_core.cli.common import add_command, feature_cache, run_store, write_json
from toptune_core.config import Settings
from toptune_core.methods.classifiers import CLASSIFIERS


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def sweep_table(runs: list) -> str:
    """A Markdown table of the sweep's runs; ``*`` marks the best trade-offs (counting feature extraction) among
    the runs on the same split (seed)."""
    from toptune_core.reports import pareto_front

    front = [False] * len(runs)
    for seed in {r.params.get("seed") for r in runs}:
        idx = [i for i, r in enumerate(runs) if r.params.get("seed") == seed]
        marks = pareto_front([runs[i].accuracy for i in idx],
                             [runs[i].timings.get("train_seconds_with_extraction") for i in idx])
        for i, mark in zip(idx, marks):
            front[i] = mark
    header = ["backbone", "classifier", "seed", "accuracy", "macro F1", "classifier fit s",
              "training s with feature extraction", "features", "best trade-off", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, best in zip(runs, front):
        t = run.timings
        choice = (run.params or {}).get("classifier_choice") or {}
        label = run.classifier + (f" -> {choice['chosen']}" if choice.get("chosen") else "")
        lines.append("| " + " | ".join([
            run.backbone, label, str((run.params or {}).get("seed")), f"{run.accuracy:.3f}", f"{run.metrics['macro_f1']:.3f}", f"{t['fit_seconds']:.2f}",
            f"{t['train_seconds_with_extraction']:.1f}", "from cache" if t.get("cache_hit") else "extracted",
            "*" if best else "", run.id]) + " |")
    return "\n".join(lines)


def seeds_table(runs: list) -> str:
    """Mean ± standard deviation over the seeds of each backbone x classifier (a Markdown table)."""
    import numpy as np

    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault((run.backbone, run.classifier), []).append(run)
    lines = ["| backbone | classifier | seeds | accuracy, mean ± std | min-max | median classifier fit s | "
             "held-out photos with a near-duplicate in training (mean) | chosen |", "|" + "---|" * 8]
    for (backbone, classifier), group in groups.items():
        acc = np.array([r.accuracy for r in group])
        fit = np.median([r.timings["fit_seconds"] for r in group])
        twins = np.mean([(r.split.get("near_duplicates") or {}).get("test_photos_with_twin", 0) for r in group])
        chosen = [((r.params or {}).get("classifier_choice") or {}).get("chosen", "") for r in group]
        lines.append(f"| {backbone} | {classifier} | {len(group)} | {acc.mean():.3f} ± {acc.std():.3f} | "
                     f"{acc.min():.3f}-{acc.max():.3f} | {fit:.2f} | {twins:.1f} | {','.join(c for c in chosen if c)} |")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.experiment import summary
    from toptune_core.progress import TextProgressBar
    from toptune_core.sweep import run_sweep

    result = run_sweep(args.data, test_data=args.test_data, backbones=_names(args.backbones) or None,
                       classifiers=_names(args.classifiers) or None, seed=args.seed,
                       seeds=[int(s) for s in _names(args.seeds)] or None, test_size=args.test_size,
                       split=args.split, store=run_store(settings), cache=feature_cache(settings),
                       progress=TextProgressBar())
    print()
    if result.runs:
        first = result.runs[0]
        print(f"{len(result.runs)} run(s) on {first.dataset}: {first.split['n_train']} training photos, "
              f"{first.split['n_test']} held-out photos ({first.split['method']}"
              + (f"; and seeds {args.seeds}" if len(_names(args.seeds)) > 1 else "") + ")")
        print(sweep_table(result.runs))
        if len(_names(args.seeds)) > 1:
            print()
            print(seeds_table(result.runs))
    for backbone, classifier, reason in result.failures:
        print(f"failed: {backbone} + {classifier}: {reason}")
    write_json(args.json, {"runs": [summary(r) for r in result.runs],
                           "failures": [{"backbone": b, "classifier": c, "error": e} for b, c, e in result.failures]})
    return 0 if not result.failures else 1


def cmd_grid(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.defaults_grid import defaults_grid, grid_table
    from toptune_core.progress import TextProgressBar

    grid = defaults_grid(args.data, args.backbone, classifiers=_names(args.classifiers),
                         view_names=_names(args.views), seed=args.seed, test_size=args.test_size,
                         resolutions=[None if r == "own" else int(r) for r in _names(args.resolutions)],
                         cache=feature_cache(settings), progress=TextProgressBar())
    print()
    print(grid_table(grid))
    write_json(args.json, grid)
    return 0


def add_parsers(sub) -> None:
    p = add_command(sub, "sweep", cmd_sweep, "top-tune every backbone x classifier; one recorded run each, one table",
                    data=True, backbone=False)
    p.add_argument("--backbones", default="",
                   help="comma-separated backbones (default: every offline one, tf_efficientnet_lite0,1,2)")
    p.add_argument("--classifiers", default="", help=f"comma-separated classifiers (default: all of "
                                                     f"{','.join(CLASSIFIERS)})")
    p.add_argument("--seeds", default="", help="comma-separated seeds: repeat every combination on each seed's "
                                               "split and print means over them (default: --seed only)")
    g = add_command(sub, "grid", cmd_grid, "classifier x views x resolution by the estimate for new photos and a "
                    "random split; the cell the rule chooses (the defaults' evidence)")
    g.add_argument("--data", required=True, help="dataset folder: one sub-folder of photos per class")
    g.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone name")
    g.add_argument("--classifiers", default="logreg,rf,kernel", help="comma-separated (default logreg,rf,kernel)")
    g.add_argument("--views", default="1,flip,dihedral", help="comma-separated view sets (default 1,flip,dihedral)")
    g.add_argument("--resolutions", default="own", help="comma-separated input sides; 'own': the backbone's own")
    g.add_argument("--seed", type=int, default=0, help="seed of the split and the folds (default 0)")
    g.add_argument("--test-size", type=float, default=0.25, help="share held out (default 0.25)")
    g.add_argument("--json", help="write the grid as JSON to this file")


COMMANDS = ("sweep", "grid")
