"""Operator commands of a shared server: ``showcase`` (runs every visitor sees) and ``visitors`` (workspaces).

``python -m toptune_core showcase RUN_ID`` copies a completed run of the
operator's own store (``$TOPTUNE_HOME``, where ``toptune`` and ``finetune``
record) into the showcase store (``$TOPTUNE_HOME/showcase``): every visitor of a
shared-mode dashboard sees it, read-only, beside their own runs.
``--remove RUN_ID`` takes it away again; ``--list`` lists the showcase.
``python -m toptune_core visitors [--sweep]`` lists the visitors' workspaces
(size, runs, idle time) and, with ``--sweep``, removes the idle ones now.
"""

from __future__ import annotations

import argparse
import time

from toptune_core.cli.common import add_command, run_store
from toptune_core.config import Settings


def cmd_showcase(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.runs.store import RunStore

    showcase = RunStore(settings.ensure_home() / "showcase")
    if args.remove:
        showcase.delete(args.remove)
        print(f"run {args.remove} is no longer shown to visitors")
    elif args.run_id:
        run = showcase.import_run(run_store(settings), args.run_id)
        print(f"showcase: {run.label} (every visitor sees it, read-only)")
    for run in showcase.list():
        print(f"showcase {run.label}")
    return 0


def cmd_visitors(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.shared.visitors import SEEN_FILE, Visitors

    visitors = Visitors(settings)
    if args.sweep:
        removed = visitors.sweep()
        print(f"removed {len(removed)} idle workspace(s)")
    homes = sorted(p for p in visitors.root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if visitors.root.is_dir() else []
    for home in homes:
        visitor = visitors._visitor(home.name)
        seen = (home / SEEN_FILE).stat().st_mtime if (home / SEEN_FILE).exists() else home.stat().st_mtime
        print(f"{home.name}  {visitor.disk_mb():8.1f} MB  {len(visitor.store().list()):3d} run(s)  "
              f"idle {(time.time() - seen) / 3600:6.1f} h")
    print(f"{len(homes)} workspace(s) in {visitors.root}")
    return 0


COMMANDS = ("showcase", "visitors")


def add_parsers(sub) -> None:
    p = add_command(sub, "showcase", cmd_showcase, "show a run to every visitor of a shared server (read-only)")
    p.add_argument("run_id", nargs="?", help="a completed run of this data folder's store to add to the showcase")
    p.add_argument("--remove", metavar="RUN_ID", help="take a run out of the showcase")
    p = add_command(sub, "visitors", cmd_visitors, "list the visitors' workspaces of a shared server")
    p.add_argument("--sweep", action="store_true", help="remove the workspaces idle longer than TOPTUNE_IDLE_HOURS")
