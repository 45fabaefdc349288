"""Command-line command ``warm-demo``: extract the demo dataset's features before the first visitor comes
(``toptune_core.warmup``; ``make serve`` runs it beside the dashboard)."""

from __future__ import annotations

import argparse

from toptune_core.cli.common import add_command
from toptune_core.config import DEMO_DATASET, Settings


def cmd_warm_demo(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.warmup import warm_up

    state = warm_up(settings, args.data or DEMO_DATASET)
    if state["state"] != "ready":
        print(f"warm-up {state['state']}: {state.get('error', '')}")
        return 1
    print(f"warm-up ready: the features of {state['photos']} photos of {state['folder']} are in the cache")
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("warm-demo",)


def add_parsers(sub) -> None:
    p = add_command(sub, "warm-demo", cmd_warm_demo,
                    "extract the demo dataset's default features into the cache (a live demo starts warm)")
    p.add_argument("--data", help="the folder to warm up instead of the demo dataset")
