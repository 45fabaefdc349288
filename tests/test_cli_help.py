"""Every command's ``--help`` (and every sub-command's under it, e.g. ``bench engines``) exits 0 and prints its usage;
the older benchmark names still reach their commands."""

from __future__ import annotations

import argparse

import pytest

from toptune_core.cli import bench
from toptune_core.cli.main import MODULES, build_parser, main

COMMANDS = [name for module in MODULES for name in module.COMMANDS]


def _sub_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    assert done.value.code == 0, f"{' '.join(argv)}: exit {done.value.code}\n{out.err}"
    return out.out


def test_the_parser_has_exactly_the_modules_commands():
    assert sorted(_sub_commands(build_parser())) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_works(command, capsys):
    text = _help([command, "--help"], capsys)
    assert text.startswith(f"usage: python -m toptune_core {command}")
    for name in _sub_commands(_sub_commands(build_parser(command))[command]):
        assert _help([command, name, "--help"], capsys).startswith(f"usage: python -m toptune_core {command} {name}")


@pytest.mark.parametrize("old", sorted(bench.OLD_NAMES) + ["bench --data demo"])
def test_the_older_benchmark_names_still_work(old, capsys):
    text = _help([*old.split(), "--help"], capsys)
    new = "engines" if old.startswith("bench ") else bench.OLD_NAMES[old]
    assert text.startswith(f"usage: python -m toptune_core bench {new}")
