"""Server folders a visitor may use (shared mode): an allow-list, checked after resolving every link.

A visitor never types a server path. The operator lists the folders visitors
may train on (``TOPTUNE_DATA_ROOTS``); the dashboard offers those folders and
their sub-folders as a list. Whatever path reaches the server (from that list,
a remembered choice or anything else) is resolved first (symbolic links,
``..``) and refused unless it lies inside an allowed root; a dataset is also
refused when any of its photos resolves outside them (a link inside an allowed
folder pointing elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from toptune_core.data.dataset import Dataset
from toptune_core.errors import PathNotAllowed


def _real(path: str | os.PathLike) -> Path | None:
    try:
        return Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL byte
        return None


def _inside(real: Path, roots: Iterable[Path]) -> bool:
    for root in roots:
        root_real = _real(root)
        if root_real is not None and (real == root_real or real.is_relative_to(root_real)):
            return True
    return False


def resolve_inside(path: str | os.PathLike, roots: Sequence[Path]) -> Path:
    """``path`` with every link and ``..`` resolved, if it exists inside one of ``roots``; else ``PathNotAllowed``."""
    real = _real(path)
    if real is None or not _inside(real, roots):
        shown = str(path)[:120]
        raise PathNotAllowed(f"'{shown}' is not one of the folders this server offers; choose a folder from the list.")
    return real


def check_photos_inside(ds: Dataset, roots: Sequence[Path]) -> None:
    """``PathNotAllowed`` if any photo of ``ds`` resolves outside ``roots`` (a link pointing out of the folder)."""
    real_roots = [r for r in (_real(root) for root in roots) if r is not None]
    outside = 0
    for photo in ds.paths:
        real = _real(photo)
        if real is None or not any(real == r or real.is_relative_to(r) for r in real_roots):
            outside += 1
    if outside:
        raise PathNotAllowed(f"{outside} photo(s) in '{ds.root.name}' link to files outside the folders this server "
                             "allows; the folder was refused. Ask the operator to copy the photos in instead.")


def offered_folders(roots: Sequence[Path]) -> list[tuple[str, Path]]:
    """The folders to offer: each root and its visible sub-folders, as ``(label, resolved path)``, only those that
    resolve inside a root (a link out of a root is not offered)."""
    offered: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for root in roots:
        real_root = _real(root)
        if real_root is None or not real_root.is_dir():
            continue
        try:
            children = sorted(p for p in real_root.iterdir() if not p.name.startswith(".") and p.is_dir())
        except OSError:
            children = []
        for label, path in [(real_root.name, real_root)] + [(f"{real_root.name}/{c.name}", c) for c in children]:
            real = _real(path)
            if real is not None and real not in seen and _inside(real, roots):
                seen.add(real)
                offered.append((label, real))
    return offered
