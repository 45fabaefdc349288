"""Command-line commands ``toptune`` and ``runs`` (top-tuning, and the recorded runs).

``python -m toptune_core toptune --data DIR [--backbone NAME] [--classifier kernel|auto|logreg|rf]``
extracts (cached) features, fits the classifier, evaluates and records the run;
``runs`` lists the recorded runs. (``predict`` lives in ``cli.predict``.)
"""

from __future__ import annotations

import argparse

from toptune_core.cli.common import add_command, feature_cache, feature_settings, run_store, write_json
from toptune_core.config import Settings
from toptune_core.data.duplicates import describe_leakage
from toptune_core.features import engines
from toptune_core.methods.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER


def print_report(run) -> None:
    """The human-readable result of a top-tuning run."""
    m, t, s = run.metrics, run.timings, run.split
    print(f"run {run.id}: {run.label}")
    print(f"  split: {s.get('method')}; {s.get('n_train')} training photos, {s.get('n_test')} held-out photos")
    print(f"  held-out accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"macro F1 {m['macro_f1']:.3f}")
    print_choice(run)
    print_stages(run)
    print("  " + describe_leakage(s.get("near_duplicates") or {}))
    fam = m.get("familiarity")
    if fam:
        print(f"  unknown-photo check (normal): {fam['coverage']:.1%} of held-out photos recognised, accuracy on "
              f"those {fam['accuracy_recognised']:.3f} (without the check {fam['accuracy_all']:.3f})")
    if run.method == "toptune":
        p = run.params or {}
        print(f"  features: {run.backbone} at {p.get('resolution')} px, view set '{p.get('views')}' "
              f"({p.get('n_views')} view(s) of each photo; predictions average over them)")
        source = "from cache" if t.get("cache_hit") else "extracted"
        print(f"  features {source} in {t['extract_seconds']:.2f} s (extraction cost {t['feature_extraction_seconds']:.1f} s); "
              f"classifier fit {t['fit_seconds']:.2f} s")
        if t.get("engine"):
            print(f"  engine: {engines.describe(t['engine'], precision=t.get('precision'))}")
        print(f"  training time: {t['train_seconds_without_extraction']:.2f} s without feature extraction, "
              f"{t['train_seconds_with_extraction']:.1f} s with it")
    if s.get("unreadable"):
        print(f"  {len(s['unreadable'])} unreadable photo(s) skipped:")
        for path, reason in s["unreadable"][:20]:
            print(f"    {path}: {reason}")
        if len(s["unreadable"]) > 20:
            print(f"    ... and {len(s['unreadable']) - 20} more (all are listed in the run's split record)")


def print_stage(run, offset: float = 0.0) -> None:
    """One line as each stage's model is ready (a progressive top-tune: the first model, then the final one);
    ``offset``: seconds the command ran before the run started."""
    stage = ((run.metrics or {}).get("stages") or [{}])[-1]
    if stage.get("status") == "first":
        print(f"first model ready after {offset + stage['seconds']:.1f} s: held-out accuracy {stage['accuracy']:.3f} "
              f"with {stage['n_views']} view(s) of each photo; extracting the other views for the final model",
              flush=True)


def print_stages(run) -> None:
    """What changed between the stages of a progressive run."""
    stages = (run.metrics or {}).get("stages") or []
    if len(stages) < 2:
        return
    first, last = stages[0], stages[-1]
    if last.get("status") == "cancelled":
        print(f"  final stage cancelled: the first model ({first['n_views']} view(s), accuracy "
              f"{first['accuracy']:.3f}) is the run's model")
        return
    print(f"  stages: first model {first['accuracy']:.3f} at {first['seconds']:.1f} s ({first['n_views']} view(s)), "
          f"final model {last['accuracy']:.3f} at {last['seconds']:.1f} s ({last['n_views']} views)")


def print_choice(run) -> None:
    """What the classifier chose by cross-validation on the training photos (kernel, auto)."""
    choice = (run.params or {}).get("classifier_choice") or {}
    kernel = choice.get("chosen_settings", choice) if choice.get("chosen", "kernel") == "kernel" else {}
    for row in choice.get("cv_table", []):
        print(f"  {'*' if row['chosen'] else ' '} {row['label']}: estimated accuracy on new photos "
              f"{row['mean_accuracy']:.3f} ± {row.get('std_error', row['std_accuracy']):.3f} (standard error), "
              f"{row['fit_seconds']:.2f} s per fit")
    if choice.get("cv_table"):
        print(f"  chosen by {choice['cv']}: {choice['chosen']}")
    if "gamma" in kernel:
        print(f"  kernel width gamma {kernel['gamma']:g}, penalty {kernel['alpha']:g}, "
              f"{kernel['n_centres']} centres, temperature {kernel['temperature']:g} "
              f"(leave-one-out accuracy on the training photos {kernel['cv_accuracy']:.3f})")


def cmd_toptune(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.experiment import run_toptuning, summary
    from toptune_core.progress import TextProgressBar
    from toptune_core.system import process_age

    offset = process_age()  # the stages' seconds count from the command's start (Python and imports included)
    run = run_toptuning(args.data, test_data=args.test_data, backbone=args.backbone, classifier=args.classifier,
                        seed=args.seed, test_size=args.test_size, split=args.split, store=run_store(settings),
                        cache=feature_cache(settings), progress=TextProgressBar(),
                        on_stage=lambda run: print_stage(run, offset), **feature_settings(args))
    print_report(run)
    out = summary(run)
    out["stages"] = [{**stage, "seconds": round(offset + stage["seconds"], 3)} for stage in out["stages"]]
    write_json(args.json, out)
    return 0


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    for run in run_store(settings).list():
        print(f"{run.status:11s} {run.label}")
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("toptune", "runs")


def add_parsers(sub) -> None:
    p = add_command(sub, "toptune", cmd_toptune, "extract (cached) features, fit a classifier, evaluate, record the run",
                    data=True)
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER, choices=list(CLASSIFIERS),
                   help=f"top classifier (default {DEFAULT_CLASSIFIER}): "
                        + "; ".join(f"{k}: {c.label}" for k, c in CLASSIFIERS.items()))

    add_command(sub, "runs", cmd_runs, "list recorded runs")
