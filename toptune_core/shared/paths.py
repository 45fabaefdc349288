"""Server folders a visitor may use (shared mode): an allow-list, checked after resolving every link.

A visitor never types a server path. The operator lists the folders visitors
may train on (``TOPTUNE_DATA_ROOTS``); the dashboard offers those folders and
their sub-folders as a list. Whatever path reaches the server (from that list,
a remembered choice or anything else) is resolved first (symbolic links,
``..``) and refused unless it lies inside an allowed root; a dataset is also
refused when any of its photos resolves outside them (a link inside an allowed
folder pointing elsewhere).

A root may also be an object-store prefix (``s3://BUCKET/PREFIX``): a dataset
URL is allowed when it is that prefix or lies below it (at a ``/``); object
URLs have no links, so a listing of the prefix holds only objects below it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from toptune_core.data import storage
from toptune_core.data.dataset import Dataset
from toptune_core.data.storage import ObjectURL
from toptune_core.errors import DatasetError, PathNotAllowed


def _refused(path) -> PathNotAllowed:
    return PathNotAllowed(f"'{str(path)[:120]}' is not one of the folders this server offers; choose a folder from "
                          "the list.")


def _object_roots(roots) -> list[ObjectURL]:
    return [ObjectURL(r) for r in roots if storage.is_url(r)]


def _url_inside(path, roots) -> ObjectURL:
    """``path`` as an ``ObjectURL`` if it is one of the object-store ``roots`` or below one; else ``PathNotAllowed``."""
    try:
        url = ObjectURL(path)
    except DatasetError:
        raise _refused(path) from None
    if not any(url.is_relative_to(root) for root in _object_roots(roots)):
        raise _refused(path)
    return url


def _real(path: str | os.PathLike) -> Path | None:
    try:
        return Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL byte
        return None


def _inside(real: Path, roots: Iterable[Path]) -> bool:
    for root in roots:
        if storage.is_url(root):
            continue
        root_real = _real(root)
        if root_real is not None and (real == root_real or real.is_relative_to(root_real)):
            return True
    return False


def resolve_inside(path: str | os.PathLike, roots: Sequence[Path]) -> Path:
    """``path`` with every link and ``..`` resolved, if it exists inside one of ``roots``; else ``PathNotAllowed``.
    An ``s3://`` path: normalised, if it is one of the object-store roots or below one."""
    if storage.is_url(path):
        return _url_inside(path, roots)
    real = _real(path)
    if real is None or not _inside(real, roots):
        raise _refused(path)
    return real


def check_photos_inside(ds: Dataset, roots: Sequence[Path]) -> None:
    """``PathNotAllowed`` if any photo of ``ds`` resolves outside ``roots`` (a link pointing out of the folder)."""
    if storage.is_url(ds.root):
        for photo in ds.paths:
            _url_inside(photo, roots)
        return
    real_roots = [r for r in (_real(root) for root in roots if not storage.is_url(root)) if r is not None]
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
    resolve inside a root (a link out of a root is not offered); object-store prefixes first."""
    offered: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for url in _object_roots(roots):  # the prefix and its sub-prefixes (one listing), labelled by their URLs
        for prefix in [url, *storage.sub_prefixes(url)]:
            offered.append((str(prefix), prefix))
    for root in roots:
        if storage.is_url(root):
            continue
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
