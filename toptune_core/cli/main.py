"""The command line: ``python -m toptune_core <command> ...``; builds the parser and dispatches.

The sub-commands live in ``cli.toptune`` (toptune, runs), ``cli.predict`` (predict, unseen),
``cli.finetune`` (finetune, compare), ``cli.bench`` (bench) and ``cli.showcase`` (showcase,
visitors: a shared server's operator). The
environment is read here, once (``Settings.from_env()``), and passed to the
command. Errors a user can act on print one line (``error: ...``) and exit
with status 2; there is no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from toptune_core.cli import bench, finetune, predict, showcase, toptune
from toptune_core.config import Settings
from toptune_core.errors import ToptuneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toptune_core",
                                     description="Top-tuning of pretrained backbones on plant photos.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (toptune, predict, finetune, bench, showcase):
        module.add_parsers(sub)
    return parser


def main(argv: Optional[list[str]] = None, settings: Optional[Settings] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings or Settings.from_env()
    try:
        return args.handler(args, settings)
    except ToptuneError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
