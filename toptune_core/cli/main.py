"""The command line: ``python -m toptune_core <command> ...``.

Errors a user can act on print one line (``error: ...``) and exit with status 2;
there is no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from toptune_core.errors import ToptuneError
from toptune_core.progress import TextProgressBar

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def _write_json(path: Optional[str], obj: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=2))


def _print_report(run) -> None:
    m, t, s = run.metrics, run.timings, run.split
    print(f"run {run.id}: {run.label}")
    print(f"  split: {s.get('method')}; {s.get('n_train')} training photos, {s.get('n_test')} held-out photos")
    print(f"  held-out accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"macro F1 {m['macro_f1']:.3f}")
    if run.method == "toptune":
        source = "from cache" if t.get("cache_hit") else "extracted"
        print(f"  features {source} in {t['extract_seconds']:.2f} s (extraction cost {t['feature_extraction_seconds']:.1f} s); "
              f"classifier fit {t['fit_seconds']:.2f} s")
        print(f"  training time: {t['train_seconds_without_extraction']:.2f} s without feature extraction, "
              f"{t['train_seconds_with_extraction']:.1f} s with it")
    if s.get("unreadable"):
        print(f"  {len(s['unreadable'])} unreadable photo(s) skipped:")
        for path, reason in s["unreadable"][:20]:
            print(f"    {path}: {reason}")
        if len(s["unreadable"]) > 20:
            print(f"    ... and {len(s['unreadable']) - 20} more (all are listed in the run's split record)")


@command("toptune")
def cmd_toptune(args: argparse.Namespace) -> int:
    from toptune_core.experiment import run_toptuning, summary

    run = run_toptuning(args.data, test_data=args.test_data, backbone=args.backbone, classifier=args.classifier,
                        seed=args.seed, test_size=args.test_size, progress=TextProgressBar())
    _print_report(run)
    _write_json(args.json, summary(run))
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    from toptune_core.predict import Predictor

    predictor = Predictor.from_run(args.run)
    for image in args.images:
        pred = predictor.predict(image)
        top = ", ".join(f"{c} {p:.3f}" for c, p in pred.top(args.top))
        print(f"{image}: {pred.label} ({pred.confidence:.1%}) | {top}")
    return 0


@command("runs")
def cmd_runs(args: argparse.Namespace) -> int:
    from toptune_core.runs.store import RunStore

    for run in RunStore().list():
        print(f"{run.status:11s} {run.label}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(prog="python -m toptune_core",
                                     description="Top-tuning of pretrained backbones on plant photos.")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p):
        p.add_argument("--data", required=True, help="dataset folder: one sub-folder of photos per class")
        p.add_argument("--test-data", help="optional separate test folder with the same class folders")
        p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone name (default {DEFAULT_BACKBONE})")
        p.add_argument("--seed", type=int, default=0, help="seed of the split and the model (default 0)")
        p.add_argument("--test-size", type=float, default=0.25, help="share held out for testing (default 0.25)")
        p.add_argument("--json", help="write the result as JSON to this file")

    p = sub.add_parser("toptune", help="extract (cached) features, fit a classifier, evaluate, record the run")
    data_args(p)
    p.add_argument("--classifier", default="rf", choices=["rf", "logreg"], help="top classifier (default rf)")

    p = sub.add_parser("predict", help="classify photos with a recorded run")
    p.add_argument("--run", required=True, help="run id (see: python -m toptune_core runs)")
    p.add_argument("--top", type=int, default=3, help="how many classes to show (default 3)")
    p.add_argument("images", nargs="+", help="photo file(s)")

    sub.add_parser("runs", help="list recorded runs")

    for extend in _EXTENSIONS:
        extend(sub, data_args)
    return parser


# Other modules (fine-tune, benchmarks) add their sub-commands here: each is
# ``fn(subparsers, data_args)`` that adds a parser and registers its handler with ``@command``.
_EXTENSIONS: list[Callable] = []


def _load_extensions() -> None:
    from toptune_core.bench import run as bench
    from toptune_core.cli import finetune as finetune_cli

    if not _EXTENSIONS:
        _EXTENSIONS.extend([finetune_cli.add_cli, bench.add_cli])


def main(argv: Optional[list[str]] = None) -> int:
    _load_extensions()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ToptuneError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
