"""Small file helpers shared by the stores: a file's SHA-256 (and the photos' content hashes, remembered per
process), writing a file atomically, and an exclusive lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read 1 MB at a time."""
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes with ``hashlib``'s ``algorithm`` ("md5": an object store's ETag of a
    simple upload), read 1 MB at a time."""
    h = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Content hashes already computed in this process, by (path, device, inode, size, mtime): a dashboard's second
#: version of a dataset, the near-duplicate reference after a run's own features, or the split after the feature
#: cache, does not read every photo again.
_HASHES: dict[tuple, str] = {}
_MAX_HASHES = 500_000


def content_hashes(paths: Sequence, should_stop: Optional[Callable[[], None]] = None,
                   algorithm: str = "sha256") -> list[Optional[str]]:
    """Each local file's digest (SHA-256 by default; None for a file that cannot be read), remembered while it is
    unchanged. ``should_stop``: called every 64 files (it raises to stop)."""
    hashes: list[Optional[str]] = []
    for i, path in enumerate(paths):
        if should_stop is not None and i % 64 == 0:
            should_stop()
        try:
            st = os.stat(path)
            key = (algorithm, str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in _HASHES:
                if len(_HASHES) >= _MAX_HASHES:
                    _HASHES.clear()
                _HASHES[key] = file_digest(path, algorithm)
            hashes.append(_HASHES[key])
        except OSError:
            hashes.append(None)
    return hashes


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and one rename: a reader
    sees the old file or the new one, never half of one. The temporary file is removed on any error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created with its folder) for the block: other processes wait."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
