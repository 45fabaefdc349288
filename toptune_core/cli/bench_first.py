"""Command-line command ``bench-first``: the first run of a new dataset, to the first and the final model
(``toptune_core.bench.first``)."""

from __future__ import annotations

import argparse
import sys
import time

from toptune_core.cli.common import add_command, write_json
from toptune_core.config import Settings


def cmd_bench_first(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.bench.first import bench_first, first_table

    start = time.perf_counter()
    figs = bench_first(args.data, log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}",
                                                         file=sys.stderr, flush=True))
    print(first_table(figs))
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")
    write_json(args.json, figs, default=str)
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("bench-first",)


def add_parsers(sub) -> None:
    p = add_command(sub, "bench-first", cmd_bench_first,
                    "the first top-tune of a dataset as a new process from an empty home: seconds to the first and "
                    "the final model, the engine's rate against PyTorch eager's ceiling; prints a table")
    p.add_argument("--data", required=True, help="dataset folder (class folders of photos)")
    p.add_argument("--json", help="also write the figures to this JSON file")
