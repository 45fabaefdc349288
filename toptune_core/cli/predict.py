"""Command-line commands ``predict`` (diagnose photos with a recorded run) and ``unseen`` (the honest limit).

``python -m toptune_core predict --run RUN_ID PATH... [--json OUT] [--strictness normal]``
takes photo files and folders (searched recursively for photos), or s3:// objects and prefixes, loads the
model once and prints one line per photo: the class, or "NOT RECOGNISED" for
a photo unlike the training photos, with the familiarity score and every
class's probability. An unreadable file gets an error line and does not
stop the others. ``--json`` writes ``{"run_id", "predictions": [...]}``; ``--heatmaps`` adds each recognised photo's class maps
(``toptune_core.explain``).

``python -m toptune_core unseen --data DIR`` trains with each class left out
in turn and reports how many photos of the left-out class are refused.
"""

from __future__ import annotations

import argparse
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
    from toptune_core.trust.unseen import unseen_class_report

    rows = unseen_class_report(args.data, backbone=args.backbone, classifier=args.classifier, seed=args.seed,
                               test_size=args.test_size, strictness=args.strictness, cache=feature_cache(settings),
                               **feature_settings(args),
                               progress=TextProgressBar())
    print("| class left out | its photos | refused (not recognised) | learned classes' held-out photos "
          "accepted | accuracy on those |")
    print("|---|---|---|---|---|")
    for r in rows:
        acc = r["accuracy_learned_recognised"]
        print(f"| {r['left_out']} | {r['n_unseen']} | {r['refused_unseen']:.1%} | {r['coverage_learned']:.1%} | "
              + ("-" if acc is None else f"{acc:.3f}") + " |")
    write_json(args.json, {"strictness": args.strictness, "rows": rows})
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

    p = add_command(sub, "unseen", cmd_unseen, "train with each class left out; how many of its photos are refused",
                    data=True)
    p.add_argument("--classifier", default="logreg", help="top classifier (default logreg)")
    p.add_argument("--strictness", default=DEFAULT_STRICTNESS, choices=list(STRICTNESS), help=strict_help)
