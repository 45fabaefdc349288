"""What every sub-command shares: the dataset flags, ``--json`` writing and the run store of the settings.

A command module (``cli.toptune``, ``cli.finetune``, ``cli.bench``) has an
``add_parsers(subparsers)`` that adds its parsers and sets each one's
``handler``: ``handler(args, settings) -> exit status``. ``cli.main`` builds
the parser from those modules and calls the handler with the ``Settings``
it read from the environment once. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Optional

from toptune_core.config import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def add_command(subparsers, name: str, handler: Handler, help: str, *, data: bool = False,
                backbone: bool = True) -> argparse.ArgumentParser:
    """A sub-command parser that runs ``handler``; with ``data``, it takes the dataset flags (and ``--backbone``
    unless ``backbone`` is False)."""
    p = subparsers.add_parser(name, help=help)
    p.set_defaults(handler=handler)
    if data:
        data_args(p, backbone)
    return p


def data_args(p: argparse.ArgumentParser, backbone: bool = True) -> None:
    """The flags of every command that trains on a dataset."""
    from toptune_core.backbones.catalogue import DEFAULT_BACKBONE

    p.add_argument("--data", required=True, help="dataset folder: one sub-folder of photos per class")
    p.add_argument("--test-data", help="optional separate test folder with the same class folders")
    if backbone:
        p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone name (default {DEFAULT_BACKBONE})")
        feature_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the model (default 0)")
    p.add_argument("--test-size", type=float, default=0.25, help="share held out for testing (default 0.25)")
    p.add_argument("--split", default="random", choices=["random", "grouped"],
                   help="random: stratified random split; grouped: photos of a likely plant or session kept on one side "
                        "(default random; ignored with --test-data)")
    p.add_argument("--json", help="write the result as JSON to this file")


def feature_args(p: argparse.ArgumentParser) -> None:
    """The flags that decide the features besides the backbone: view set and input resolution."""
    from toptune_core.backbones.pixels import RESOLUTIONS
    from toptune_core.features.views import DEFAULT_VIEWS, LABELS

    p.add_argument("--views", choices=list(LABELS), default=None,
                   help="views of each photo: " + "; ".join(f"{k}: {v}" for k, v in LABELS.items())
                        + f" (default {DEFAULT_VIEWS}, or TOPTUNE_VIEWS)")
    p.add_argument("--resolution", type=int, default=None,
                   help=f"input side in pixels, e.g. {', '.join(map(str, RESOLUTIONS))} (default: the backbone's own)")


def feature_settings(args: argparse.Namespace) -> dict:
    """``views`` and ``resolution`` as the command line gave them (None: the defaults)."""
    return {"views": getattr(args, "views", None), "resolution": getattr(args, "resolution", None)}


def write_json(path: Optional[str], obj: dict, **kw) -> None:
    """``obj`` as indented JSON to ``path``, when a path was given (``--json``)."""
    if path:
        Path(path).write_text(json.dumps(obj, indent=2, **kw))


def run_store(settings: Settings):
    """The run store under ``settings.home`` (created on first use, with the one-line error if it cannot be)."""
    from toptune_core.runs.store import RunStore

    settings.ensure_home()
    return RunStore(settings.runs_root)


def feature_cache(settings: Settings):
    """The feature cache under ``settings.home``."""
    from toptune_core.features.cache import FeatureCache

    return FeatureCache(settings=settings)
