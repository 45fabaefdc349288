"""Command-line commands ``predict`` (diagnose photos with a recorded run) and ``unseen`` (the honest limit).

``python -m toptune_core predict --run RUN_ID PATH... [--json OUT] [--strictness normal]``
takes photo files and folders (searched recursively for photos), or s3:// objects and prefixes, loads the
model once and prints one line per photo: the class, or "NOT RECOGNISED" for
a photo unlike the training photos, with the familiarity score and every
class's probability. An unreadable file gets an error line and does not
stop the others. ``--json`` writes ``{"run_id", "predictions": [...]}``; ``--heatmaps`` adds each recognised photo's class maps
(``toptune_core.explain``).

``python -m toptune_core unseen --data DIR [--json OUT]`` leaves each class out in turn and reports, for every
unfamiliarity score tried (``trust.scores``), the learned photos accepted, the left-out class's photos refused,
the AUROC and the far photos refused, at a threshold set on out-of-fold training scores (``trust.unseen``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from toptune_core.cli.common import add_command, feature_cache, feature_settings, run_store, write_json
from toptune_core.config import Settings
from toptune_core.data import storage


def _objects(url: str) -> list[str]:
    """The photos below an ``s3://`` prefix; the URL itself when nothing is below it (one object, or its error)."""
    from toptune_core.data.images import UNSUPPORTED_EXTENSIONS, is_image_file
    from toptune_core.errors import DatasetError

    try:
        listed = storage.list_objects(storage.ObjectURL(url))
    except DatasetError:
        return [url]  # an object's own URL, or nothing readable there: its line says why
    return [o.url for o in listed if is_image_file(o.url) or o.url.suffix.lower() in UNSUPPORTED_EXTENSIONS]


def photo_paths(paths: list[str]) -> list[str]:
    """Files as given; folders (and ``s3://`` prefixes) searched recursively for photos (and for known unsupported
    formats, which then get their one-line error)."""
    from toptune_core.data.images import UNSUPPORTED_EXTENSIONS, is_image_file

    out: list[str] = []
    for given in paths:
        p = Path(given)
        if storage.is_url(given):
            out += _objects(given)
        elif p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                          and (is_image_file(f) or f.suffix.lower() in UNSUPPORTED_EXTENSIONS))
        else:
            out.append(given)
    return out


def _line(path: str, entry: dict, top: int) -> str:
    if "error" in entry:
        return f"{path}: error: {entry['error']}"
    probs = ", ".join(f"{c} {p:.3f}" for c, p in entry["top"][:top])
    fam = "" if entry["familiarity"] is None else f" | familiarity {entry['familiarity']:.2f}"
    if entry["unknown"]:
        return f"{path}: NOT RECOGNISED (does not look like the photos this model was trained on){fam} | {probs}"
    return f"{path}: {entry['label']} ({entry['confidence']:.1%}){fam} | {probs}"


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.errors import ToptuneError
    from toptune_core.predict import Predictor

    paths = photo_paths(args.images)
    if not paths:
        raise ToptuneError(f"No photos found in {', '.join(repr(Path(x).name) for x in args.images)} (a folder is "
                           "searched for JPEG, PNG, WebP, GIF, BMP or TIFF photos, sub-folders included).")
    predictor = Predictor.from_run(args.run, store=run_store(settings), settings=settings)
    entries = []
    for path in paths:
        try:
            entry = predictor.predict(path, strictness=args.strictness, heatmaps=args.heatmaps).as_dict(path)
        except ToptuneError as e:  # an unreadable photo: its own entry, the others go on
            entry = {"path": path, "error": str(e)}
        entries.append(entry)
        print(_line(path, entry, args.top), flush=True)
    write_json(args.json, {"run_id": predictor.run.id, "predictions": entries})
    failed = [e for e in entries if "error" in e]
    if len(failed) == len(entries):
        raise ToptuneError(f"None of the {len(entries)} photo(s) could be read; the first problem: "
                           f"{failed[0]['error']}")
    return 0


def cmd_unseen(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.progress import TextProgressBar
    from toptune_core.trust.scores import VARIANTS
    from toptune_core.trust.unseen import unseen_report

    report = unseen_report(args.data, backbone=args.backbone, classifier=args.classifier, seed=args.seed,
                           test_size=args.test_size,
                           strictness=args.strictness, cache=feature_cache(settings), home=settings.ensure_home(),
                           patches=not args.no_patches, mid_level=args.mid_level,
                           variants=args.scores, progress=TextProgressBar(), **feature_settings(args))
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    for fold in report["folds"]:
        print(f"\n{fold['left_out']} never learned ({fold['n_unseen']} photos; trained on "
              f"{fold['n_train']} photos of {', '.join(fold['learned'])}; {fold['n_test_learned']} held out; "
              f"threshold: {report['accept']:.0%} of out-of-fold training scores)")
        print("| score | learned accepted | accuracy on accepted | left-out refused | AUROC | far refused |")
        print("|---|---|---|---|---|---|")
        for name, f in fold["variants"].items():
            acc = "-" if f["accuracy_accepted"] is None else f"{f['accuracy_accepted']:.3f}"
            print(f"| {name} | {f['acceptance']:.1%} | {acc} | {f['refused_unseen']:.1%} | {f['auroc']:.3f} | "
                  f"{f['far_refused_n']}/{fold['n_far']} |")
    print("\nscores: " + "; ".join(f"{k}: {v[0]}" for k, v in VARIANTS.items()))
    print(f"load average at the end: {report['load_average']}")
    write_json(args.json, report)
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("predict", "unseen")


def add_parsers(sub) -> None:
    from toptune_core.trust.familiarity import DEFAULT_STRICTNESS, STRICTNESS

    strict_help = ("how strict the unknown-photo check is: " + ", ".join(
        f"{k} accepts {v * 100:.0f}%% of photos like the training photos"  # %%: argparse %-formats helps
        for k, v in STRICTNESS.items())
        + f" (default {DEFAULT_STRICTNESS})")
    p = add_command(sub, "predict", cmd_predict, "diagnose photos with a recorded run ('not recognised' for photos "
                                                 "unlike its training photos)")
    p.add_argument("--run", required=True, help="run id (see: python -m toptune_core runs)")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per line (default 3)")
    p.add_argument("--strictness", default=DEFAULT_STRICTNESS, choices=list(STRICTNESS), help=strict_help)
    p.add_argument("--json", help="write every prediction as JSON to this file")
    p.add_argument("--heatmaps", action="store_true",
                   help="with --json: for each recognised photo, where on it each class's evidence lies: 'heatmaps', "
                        "per class a 2-D list (rows x columns over the photo's centre crop, in the photo's "
                        "orientation; logit units; logistic regression only)")
    p.add_argument("images", nargs="+", help="photo files and/or folders (searched recursively); s3:// objects or prefixes")

    p = add_command(sub, "unseen", cmd_unseen, "train with each class left out; how many of its photos each "
                                               "unfamiliarity score refuses", data=True)
    p.add_argument("--classifier", default="logreg", help="top classifier behind the margin and the accuracy "
                                                          "(default logreg)")
    p.add_argument("--no-patches", action="store_true", help="skip the patch scores (they need the maps before "
                                                             "pooling: minutes the first time)")
    p.add_argument("--scores", nargs="+", help="the scores to measure, e.g. knn 'max(knn,patch)' (default: every one; "
                                               "see trust/scores.py)")
    p.add_argument("--mid-level", action="store_true", help="also the patch score on a mid-level map (PatchCore's "
                                                            "layer choice; more minutes the first time)")
    p.add_argument("--strictness", default=DEFAULT_STRICTNESS, choices=list(STRICTNESS), help=strict_help)
