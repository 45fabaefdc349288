"""The command line: ``python -m toptune_core <command> ...``; builds the parser and dispatches.

The sub-commands live in ``cli.toptune`` (toptune, runs), ``cli.predict`` (predict, unseen),
``cli.export`` (export), ``cli.finetune`` (finetune, compare), ``cli.sweep`` (sweep, grid), ``cli.bench`` (bench
engines|views|labels|ray|versions), ``cli.extract`` (extract, here or on Ray), ``cli.eden`` (eden list, eden download) and
``cli.showcase`` (showcase, visitors: a shared server's operator) and ``cli.check_labels``
(check-labels: the photos whose label looks wrong). The
environment is read here, once (``Settings.from_env()``), and passed to the
command. Errors a user can act on print one line (``error: ...``) and exit
with status 2; there is no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from toptune_core.cli import (bench, check_labels, eden, export, extract, finetune, predict, showcase, sweep,
                              toptune, warm)
from toptune_core.config import Settings
from toptune_core.errors import ToptuneError


MODULES = (toptune, predict, export, finetune, sweep, bench, extract, eden, showcase, check_labels, warm)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module adds its parsers (building the fine-tune's
    flags reads the estimator, which imports scikit-learn: a cold ``predict`` must not pay for that)."""
    parser = argparse.ArgumentParser(prog="python -m toptune_core",
                                     description="Top-tuning of pretrained backbones on plant photos.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in [m for m in MODULES if command in m.COMMANDS] or MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Optional[list[str]] = None, settings: Optional[Settings] = None) -> int:
    argv = bench.new_names(sys.argv[1:] if argv is None else list(argv))
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    settings = settings or Settings.from_env()
    try:
        return args.handler(args, settings)
    except ToptuneError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
