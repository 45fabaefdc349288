"""Command-line commands ``finetune`` and ``compare`` (loaded by ``toptune_core.cli.main``).

``python -m toptune_core finetune --data DIR --backbone NAME [--epochs N] [--budget-seconds S] ...``
fine-tunes on the same split as ``toptune`` and records the run.

``python -m toptune_core compare --data DIR --backbone NAME`` runs top-tuning
(Random Forest and logistic regression) and the fine-tune on the same split and
prints one table: accuracy, macro F1, training seconds with and without feature
extraction, and how many times longer the fine-tune trained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Optional

from toptune_core.cli.main import command
from toptune_core.finetune import FINETUNE_DEFAULTS


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "all", "") else int(text)


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "") else float(text)


def _hyper_args(p: argparse.ArgumentParser) -> None:
    d = FINETUNE_DEFAULTS
    p.add_argument("--epochs", type=int, default=d["epochs"],
                   help=f"full fine-tuning epochs, after the head-only ones (default {d['epochs']})")
    p.add_argument("--head-epochs", type=int, default=d["head_epochs"],
                   help=f"epochs training only the new head first (default {d['head_epochs']})")
    p.add_argument("--budget-seconds", type=_optional_float, default=d["budget_seconds"],
                   help=f"wall-clock limit of the training in seconds; 'none' for no limit "
                        f"(default {d['budget_seconds']:g})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"(default {d['batch_size']})")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help=f"peak learning rate of the full fine-tuning phase (default {d['lr']:g})")
    p.add_argument("--head-lr", type=float, default=d["head_lr"],
                   help=f"peak learning rate of the head-only phase (default {d['head_lr']:g})")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help=f"AdamW (default {d['weight_decay']:g})")
    p.add_argument("--label-smoothing", type=float, default=d["label_smoothing"],
                   help=f"(default {d['label_smoothing']:g})")
    p.add_argument("--freeze-blocks", type=_optional_int, default=d["freeze_blocks"], metavar="N",
                   help="train only the last N blocks (and the head); default: every block")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"],
                   help=f"share of the training photos kept aside for early stopping (default {d['val_fraction']:g})")
    p.add_argument("--patience", type=int, default=d["patience"],
                   help=f"early stopping patience in epochs (default {d['patience']})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads (default: one per available CPU)")


def _hyper(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs, "head_epochs": args.head_epochs, "budget_seconds": args.budget_seconds,
            "batch_size": args.batch_size, "lr": args.lr, "head_lr": args.head_lr,
            "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
            "freeze_blocks": args.freeze_blocks, "val_fraction": args.val_fraction, "patience": args.patience,
            "device": args.device, "num_threads": args.num_threads}


def finetune_summary(run) -> dict:
    """``toptuning.summary`` plus the fine-tune's training seconds and epochs."""
    from toptune_core.experiment import summary

    out = summary(run)
    out["train_seconds"] = run.timings.get("train_seconds")
    out["epochs_run"] = run.timings.get("epochs_run")
    out["best_epoch"] = run.timings.get("best_epoch")
    out["stop_reason"] = run.timings.get("stop_reason")
    out["images_per_second"] = run.timings.get("images_per_second")
    out["device"] = run.timings.get("device")
    return out


def _print_finetune(run) -> None:
    m, t, s = run.metrics, run.timings, run.split
    print(f"run {run.id}: {run.label}")
    print(f"  split: {s.get('method')}; {s.get('n_train')} training photos ({s.get('n_val')} of them kept aside "
          f"for early stopping), {s.get('n_test')} held-out photos")
    print(f"  held-out accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"macro F1 {m['macro_f1']:.3f}")
    print(f"  {t['epochs_run']} epoch(s), best epoch {t['best_epoch']}: {t['stop_reason']}")
    ips = t.get("images_per_second")
    print(f"  training time: {t['train_seconds']:.1f} s on {t['device']} ({t['threads']} thread(s))"
          + (f", {ips:.1f} training images/s" if ips else ""))
    if s.get("unreadable"):
        print(f"  {len(s['unreadable'])} unreadable photo(s) skipped, e.g. {s['unreadable'][0][0]}: "
              f"{s['unreadable'][0][1]}")


@command("finetune")
def cmd_finetune(args: argparse.Namespace) -> int:
    from toptune_core.finetune import run_finetuning
    from toptune_core.progress import TextProgressBar

    run = run_finetuning(args.data, test_data=args.test_data, backbone=args.backbone, seed=args.seed,
                         test_size=args.test_size, progress=TextProgressBar(), **_hyper(args))
    _print_finetune(run)
    if args.json:
        Path(args.json).write_text(json.dumps(finetune_summary(run), indent=2))
    return 0


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def comparison_table(rows: list[dict]) -> str:
    """A Markdown table of the compared runs (the last row is the fine-tune)."""
    ft = rows[-1]
    header = ["method", "accuracy", "macro F1", "training s without feature extraction",
              "training s with feature extraction", "fine-tune time ÷ this (without / with extraction)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio_wo = ft["train_seconds_with_extraction"] / r["train_seconds_without_extraction"]
        ratio_w = ft["train_seconds_with_extraction"] / r["train_seconds_with_extraction"]
        lines.append("| " + " | ".join([r["method"], _fmt(r["accuracy"]), _fmt(r["macro_f1"]),
                                        _fmt(r["train_seconds_without_extraction"], 2),
                                        _fmt(r["train_seconds_with_extraction"], 1),
                                        f"{ratio_wo:,.0f}× / {ratio_w:,.1f}×"]) + " |")
    return "\n".join(lines)


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    from toptune_core.finetune import run_finetuning
    from toptune_core.progress import TextProgressBar
    from toptune_core.runs.store import RunStore
    from toptune_core.experiment import run_toptuning

    store = RunStore()
    load_before = _load()
    started = time.strftime("%Y-%m-%d %H:%M")
    runs = []
    for clf in ("rf", "logreg"):
        runs.append(run_toptuning(args.data, test_data=args.test_data, backbone=args.backbone, classifier=clf,
                                  seed=args.seed, test_size=args.test_size, store=store,
                                  progress=TextProgressBar()))
    ft = run_finetuning(args.data, test_data=args.test_data, backbone=args.backbone, seed=args.seed,
                        test_size=args.test_size, store=store, progress=TextProgressBar(), **_hyper(args))
    runs.append(ft)
    same = all(r.split["test_files"] == ft.split["test_files"] for r in runs)
    rows = []
    for r in runs:
        t = r.timings
        rows.append({"run_id": r.id, "method": ("top-tune " + {"rf": "Random Forest", "logreg": "logistic regression"}
                                                [r.classifier]) if r.method == "toptune" else "fine-tune",
                     "accuracy": r.metrics["accuracy"], "balanced_accuracy": r.metrics["balanced_accuracy"],
                     "macro_f1": r.metrics["macro_f1"],
                     "train_seconds_without_extraction": t["train_seconds_without_extraction"],
                     "train_seconds_with_extraction": t["train_seconds_with_extraction"]})
    tt = ft.timings
    print()
    print(f"{args.backbone} on {ft.dataset}: {ft.split['n_train']} training photos "
          f"({ft.split['n_val']} of them the fine-tune's validation part), {ft.split['n_test']} held-out photos "
          f"({'the same' if same else 'DIFFERENT'} held-out photos for every method; {ft.split['method']})")
    print(f"fine-tune: {tt['epochs_run']} epochs ({ft.params['hyper']['head_epochs']} head-only), best epoch "
          f"{tt['best_epoch']}, {tt['stop_reason']}; {tt['device']}, {tt['threads']} thread(s), "
          f"{tt['images_per_second']:.1f} training images/s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load average before {load_before}, after {_load()} "
          f"(1/5/15 min); started {started}")
    print()
    print(comparison_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "same_test_photos": same,
                                               "finetune": {k: tt.get(k) for k in ("epochs_run", "best_epoch",
                                                                                   "stop_reason", "images_per_second",
                                                                                   "device", "threads")},
                                               "load_average_before": load_before, "load_average_after": _load()},
                                              indent=2))
    return 0 if same else 1


def add_cli(sub, data_args) -> None:
    p = sub.add_parser("finetune", help="fine-tune the backbone with a new head on the same split; record the run")
    data_args(p)
    _hyper_args(p)
    p = sub.add_parser("compare", help="top-tune (RF, logistic regression) and fine-tune on the same split; "
                                       "print one table")
    data_args(p)
    _hyper_args(p)
