"""Command-line command ``eden``: the Eden Library catalogue, and downloading datasets from it.

``python -m toptune_core eden list [--search WORDS] [--long]`` prints the catalogue, one dataset folder
name per line (``--long``: with crop, condition, class, layout and a notebook that uses it).
``python -m toptune_core eden download NAME... [--preset top-tuning]`` downloads datasets together
(one combined progress bar; an interrupted download resumes) and prints the folder that holds them
side by side, ready for ``--data``.
"""

from __future__ import annotations

import argparse

from toptune_core.cli.common import add_command
from toptune_core.config import Settings


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.data.eden_catalogue import search

    for d in search(args.search or ""):
        if args.long:
            print(f"{d.name}\t{d.crop}\t{d.condition}\tclass '{d.label}'\t{d.layout}\t{d.notebook}")
        else:
            print(d.name)
    return 0


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.data.eden import EDEN_BASE_URL, download_eden_datasets
    from toptune_core.data.eden_catalogue import EDEN_PRESETS
    from toptune_core.errors import ToptuneError
    from toptune_core.progress import TextProgressBar, bytes_progress

    names = list(args.names)
    if args.preset:
        names += EDEN_PRESETS[args.preset].names
    if not names:
        raise ToptuneError("Name at least one Eden dataset (see `eden list`) or a --preset.")
    base_url = args.url or settings.eden_url or EDEN_BASE_URL
    folder = download_eden_datasets(names, settings.ensure_home(), base_url=base_url, workers=args.workers,
                                    progress=bytes_progress(TextProgressBar(), message=f"{len(set(names))} dataset(s)"))
    print(folder)
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("eden",)


def add_parsers(sub) -> None:
    from toptune_core.data.eden import DOWNLOAD_WORKERS
    from toptune_core.data.eden_catalogue import EDEN_PRESETS

    p = sub.add_parser("eden", help="the Eden Library catalogue; download Eden datasets")
    eden = p.add_subparsers(dest="eden_command", required=True)
    ls = add_command(eden, "list", cmd_list, "print the catalogue, one dataset folder name per line")
    ls.add_argument("--search", help="only datasets whose crop, condition or name contain every word")
    ls.add_argument("--long", action="store_true", help="also print crop, condition, class, layout and notebook")
    dl = add_command(eden, "download", cmd_download, "download datasets together; print the folder holding them")
    dl.add_argument("names", nargs="*", help="Eden dataset folder names (see `eden list`)")
    dl.add_argument("--preset", choices=sorted(EDEN_PRESETS), help="add a preset's datasets ("
                    + "; ".join(f"{k}: {p.title}" for k, p in EDEN_PRESETS.items()) + ")")
    dl.add_argument("--url", help="download address (default $TOPTUNE_EDEN_URL, else Eden's)")
    dl.add_argument("--workers", type=int, default=DOWNLOAD_WORKERS,
                    help=f"datasets downloaded at the same time (default {DOWNLOAD_WORKERS})")
