"""Command-line commands ``finetune`` and ``compare`` (fine-tuning, and both methods side by side).

``python -m toptune_core finetune --data DIR --backbone NAME [--epochs N] [--budget-seconds S] ...``
fine-tunes on the same split as ``toptune`` and records the run.

``python -m toptune_core compare --data DIR --backbone NAME`` runs top-tuning
(Random Forest, logistic regression, kernel ridge, automatic choice) and the
fine-tune on the same split and prints one table: what each method trained on,
accuracy, macro F1, training seconds with and without feature extraction, and
how many times longer the fine-tune trained.

The fine-tune flags take their defaults from the estimator (``FINETUNE_DEFAULTS``,
its constructor's defaults); no default is written here.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Optional

from toptune_core.cli.common import add_command, feature_cache, feature_settings, run_store, write_json
from toptune_core.config import Settings
from toptune_core.data.duplicates import describe_leakage


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "all", "") else int(text)


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "") else float(text)


# setting -> (type or None for text, help, metavar); "{d}" in a help is the setting's default. The flag is --setting-name.
_FLAGS: dict[str, tuple] = {
    "epochs": (int, "full fine-tuning epochs, after the head-only ones (default {d})", None),
    "head_epochs": (int, "epochs training only the new head first (default {d})", None),
    "budget_seconds": (_optional_float, "wall-clock limit of the training in seconds; 'none' for no limit "
                                        "(default {d:g})", None),
    "batch_size": (int, "(default {d})", None),
    "lr": (float, "peak learning rate of the full fine-tuning phase (default {d:g})", None),
    "head_lr": (float, "peak learning rate of the head-only phase (default {d:g})", None),
    "weight_decay": (float, "AdamW (default {d:g})", None),
    "label_smoothing": (float, "(default {d:g})", None),
    "freeze_blocks": (_optional_int, "train only the last N blocks (and the head); default: every block", "N"),
    "val_fraction": (float, "share of the training photos kept aside for early stopping (default {d:g})", None),
    "patience": (int, "early stopping patience in epochs (default {d})", None),
    "device": (None, "cpu or cuda (default: cuda when present)", None),
    "num_threads": (int, "torch CPU threads (default: one per available CPU)", None),
}


def _hyper_args(p: argparse.ArgumentParser) -> None:
    from toptune_core.finetune import FINETUNE_DEFAULTS  # reads FineTuner (scikit-learn): only for these commands

    for name, (kind, text, metavar) in _FLAGS.items():
        d = FINETUNE_DEFAULTS[name]
        kw = {"metavar": metavar} if metavar else {}
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=d,
                       help=text.format(d=d), **kw)


def _hyper(args: argparse.Namespace, settings: Settings, test_views: Optional[str] = None) -> dict:
    """The fine-tune's settings from the flags; ``--views`` (else ``TOPTUNE_VIEWS``) are its test-time views
    (``test_views`` when given: the compared top-tuned runs'); none given: ``FineTuner``'s default, the top-tuning's
    default view set, as on the Fine-tune page."""
    views = test_views or getattr(args, "views", None) or settings.views
    return {**{name: getattr(args, name) for name in _FLAGS}, **({"test_views": views} if views else {})}


def finetune_summary(run) -> dict:
    """``experiment.summary`` plus the fine-tune's training seconds and epochs."""
    from toptune_core.experiment import summary

    out = summary(run)
    for key in ("train_seconds", "epochs_run", "best_epoch", "stop_reason", "images_per_second", "device"):
        out[key] = run.timings.get(key)
    return out


def _print_finetune(run) -> None:
    m, t, s = run.metrics, run.timings, run.split
    print(f"run {run.id}: {run.label}")
    print(f"  split: {s.get('method')}; {s.get('n_train')} training photos ({s.get('n_val')} of them kept aside "
          f"for early stopping), {s.get('n_test')} held-out photos")
    print(f"  held-out accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"macro F1 {m['macro_f1']:.3f}")
    print("  " + describe_leakage(s.get("near_duplicates") or {}))
    print(f"  {t['epochs_run']} epoch(s), best epoch {t['best_epoch']}: {t['stop_reason']}")
    ips = t.get("images_per_second")
    print(f"  training time: {t['train_seconds']:.1f} s on {t['device']} ({t['threads']} thread(s))"
          + (f", {ips:.1f} training images/s" if ips else ""))
    if s.get("unreadable"):
        print(f"  {len(s['unreadable'])} unreadable photo(s) skipped, e.g. {s['unreadable'][0][0]}: "
              f"{s['unreadable'][0][1]}")


def cmd_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.errors import ToptuneError
    from toptune_core.finetune import run_finetuning
    from toptune_core.progress import TextProgressBar

    if args.resolution is not None:
        raise ToptuneError("--resolution is for top-tuning; a fine-tune trains at the backbone's own input size.")
    run = run_finetuning(args.data, test_data=args.test_data, backbone=args.backbone, seed=args.seed,
                         test_size=args.test_size, split=args.split, store=run_store(settings),
                         progress=TextProgressBar(),
                         **_hyper(args, settings))
    _print_finetune(run)
    write_json(args.json, finetune_summary(run))
    return 0


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def comparison_table(rows: list[dict]) -> str:
    """A Markdown table of the compared runs (the last row is the fine-tune)."""
    ft = rows[-1]
    header = ["method", "trained on", "accuracy", "macro F1", "training s without feature extraction",
              "training s with feature extraction", "fine-tune time ÷ this (without / with extraction)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio_wo = ft["train_seconds_with_extraction"] / r["train_seconds_without_extraction"]
        ratio_w = ft["train_seconds_with_extraction"] / r["train_seconds_with_extraction"]
        lines.append("| " + " | ".join([r["method"], r["trained_on"], _fmt(r["accuracy"]), _fmt(r["macro_f1"]),
                                        _fmt(r["train_seconds_without_extraction"], 2),
                                        _fmt(r["train_seconds_with_extraction"], 1),
                                        f"{ratio_wo:,.0f}× / {ratio_w:,.1f}×"]) + " |")
    return "\n".join(lines)


def _compare_runs(args: argparse.Namespace, settings: Settings) -> list:
    """Top-tune (every classifier), then fine-tune, all on the same split; the fine-tune is last."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.finetune import run_finetuning
    from toptune_core.progress import TextProgressBar

    store, cache = run_store(settings), feature_cache(settings)
    runs = [run_toptuning(args.data, test_data=args.test_data, backbone=args.backbone, classifier=clf,
                          seed=args.seed, test_size=args.test_size, split=args.split, store=store, cache=cache,
                          progress=TextProgressBar(), **feature_settings(args))
            for clf in _TOPTUNE_NAMES]
    # the same test-time views as the top-tuned runs, so the comparison is fair (its training already augments)
    runs.append(run_finetuning(args.data, test_data=args.test_data, backbone=args.backbone, seed=args.seed,
                               test_size=args.test_size, split=args.split, store=store, progress=TextProgressBar(),
                               **_hyper(args, settings, test_views=runs[0].params.get("views"))))
    return runs


_TOPTUNE_NAMES = {"rf": "Random Forest", "logreg": "logistic regression", "kernel": "kernel ridge (Nyström)",
                  "auto": "automatic choice"}


def trained_on(r) -> str:
    """What a compared run trained on, in words: the fine-tune keeps part of its training photos for early stopping;
    the kernel and the automatic choice cross-validate inside the training photos."""
    s = r.split
    if r.method == "finetune":
        return f"{s['n_train'] - s['n_val']} photos (+ {s['n_val']} for early stopping)"
    choice = (r.params or {}).get("classifier_choice") or {}
    if choice.get("cv_table"):
        return f"{s['n_train']} photos (5-fold CV inside them chose {choice['chosen']})"
    if "gamma" in choice:
        return f"{s['n_train']} photos (leave-one-out CV inside them chose the kernel)"
    return f"{s['n_train']} photos"


def _row(r) -> dict:
    t = r.timings
    method = "top-tune " + _TOPTUNE_NAMES[r.classifier] if r.method == "toptune" else "fine-tune"
    return {"run_id": r.id, "method": method, "trained_on": trained_on(r),
            "accuracy": r.metrics["accuracy"], "balanced_accuracy": r.metrics["balanced_accuracy"],
            "macro_f1": r.metrics["macro_f1"],
            "train_seconds_without_extraction": t["train_seconds_without_extraction"],
            "train_seconds_with_extraction": t["train_seconds_with_extraction"]}


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.measure import load_average

    load_before = load_average(unknown="?")
    started = time.strftime("%Y-%m-%d %H:%M")
    runs = _compare_runs(args, settings)
    ft = runs[-1]
    same = all(r.split["test_files"] == ft.split["test_files"] for r in runs)
    rows = [_row(r) for r in runs]
    tt = ft.timings
    print()
    print(f"{args.backbone} on {ft.dataset}: {ft.split['n_train']} training photos "
          f"({ft.split['n_val']} of them the fine-tune's validation part), {ft.split['n_test']} held-out photos "
          f"({'the same' if same else 'DIFFERENT'} held-out photos for every method; {ft.split['method']})")
    print(describe_leakage(ft.split.get("near_duplicates") or {}))
    print(f"fine-tune: {tt['epochs_run']} epochs ({ft.params['hyper']['head_epochs']} head-only), best epoch "
          f"{tt['best_epoch']}, {tt['stop_reason']}; {tt['device']}, {tt['threads']} thread(s), "
          f"{tt['images_per_second']:.1f} training images/s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load average before {load_before}, after "
          f"{load_average(unknown='?')} (1/5/15 min); started {started}")
    print()
    print(comparison_table(rows))
    write_json(args.json, {"rows": rows, "same_test_photos": same,
                           "finetune": {k: tt.get(k) for k in ("epochs_run", "best_epoch", "stop_reason",
                                                               "images_per_second", "device", "threads")},
                           "load_average_before": load_before, "load_average_after": load_average(unknown="?")})
    return 0 if same else 1


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("finetune", "compare")


def add_parsers(sub) -> None:
    p = add_command(sub, "finetune", cmd_finetune,
                    "fine-tune the backbone with a new head on the same split; record the run", data=True)
    _hyper_args(p)
    p = add_command(sub, "compare", cmd_compare,
                    "top-tune (every classifier) and fine-tune on the same split; print one table", data=True)
    _hyper_args(p)
