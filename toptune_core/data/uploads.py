"""Files a user uploads in the dashboard: a zip of class folders, or one leaf photo.

An uploaded zip is saved under ``toptune_home()/uploads/`` (or the folder given:
a visitor's own on a shared server) by its content hash
(uploading the same zip again reuses the first extraction) and unpacked with
``archive.safe_extract_zip``, which refuses unsafe or damaged zips and never
leaves a half-extracted folder. A single photo is only ever read in memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from pathlib import Path
from typing import Optional

from PIL import Image

from toptune_core.data.archive import ArchiveError, find_dataset_root, safe_extract_zip
from toptune_core.errors import ImageError, ToptuneError
from toptune_core.data.images import UNSUPPORTED_EXTENSIONS, load_rgb
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.config import toptune_home

_MB = 2 ** 20
#: Largest single photo accepted (MB). Phone photos are 2-15 MB; a 64-megapixel JPEG is rarely over 40 MB.
MAX_PHOTO_MB = 50
#: Largest dataset zip accepted (MB). Eden's own dataset zips are 0.2 to 1.2 GB.
MAX_ZIP_MB = 2000


def _size_mb(n_bytes: int) -> str:
    mb = n_bytes / _MB
    return f"{mb:,.0f}" if mb >= 10 else f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"


def uploads_dir() -> Path:
    path = toptune_home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._")
    return stem[:60] or "dataset"


def save_uploaded_zip(name: str, data: bytes, folder: Optional[Path] = None, max_mb: float = MAX_ZIP_MB) -> Path:
    """Save the bytes of an uploaded zip as ``<folder>/<stem>-<hash>.zip`` (default ``uploads_dir()``); returns
    the path.

    Raises ``ArchiveError`` for something that is not a zip or is over ``max_mb``, before anything is written.
    """
    if not data:
        raise ArchiveError(f"'{name}' is empty (0 bytes).", "Choose the dataset zip again.")
    if len(data) > max_mb * _MB:
        raise ArchiveError(f"'{name}' is {_size_mb(len(data))} MB; the limit is {max_mb:,g} MB; nothing was saved.",
                           "Split the dataset into smaller zips.")
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ArchiveError(f"'{name}' is not a zip file; nothing was unpacked.",
                           "Zip the dataset folder (one sub-folder per class) and upload that.")
    digest = hashlib.sha256(data).hexdigest()[:16]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    path = (folder or uploads_dir()) / f"{_safe_stem(name)}-{digest}.zip"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.part")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ToptuneError(f"Could not save the uploaded zip in '{path.parent}' ({e.strerror or e}); "
                               "free some disk space and try again.") from None
    return path


def extract_uploaded_zip(zip_path: str | Path, *, progress: Optional[ProgressCallback] = None,
                         should_cancel: Optional[CancelCheck] = None) -> Path:
    """Unpack a saved upload next to it (once) and return the folder holding the class folders."""
    zip_path = Path(zip_path)
    dest = zip_path.with_suffix("")
    if not (dest.is_dir() and any(dest.iterdir())):
        meter = ProgressMeter("unzip", None, progress, "MB", should_cancel)

        def on_bytes(done: int, total: int) -> None:
            meter.total = total / _MB if total else None
            meter.update(round(done / _MB, 1))

        try:
            safe_extract_zip(zip_path, dest, should_cancel=should_cancel, progress=on_bytes)
        except ArchiveError:
            if not (dest.is_dir() and any(dest.iterdir())):  # else another tab unpacked the same zip meanwhile
                raise
    return find_dataset_root(dest)


def photo_source(data: bytes, name: str = "the uploaded photo", max_mb: float = MAX_PHOTO_MB) -> io.BytesIO:
    """The uploaded bytes as a named file object, so that error messages name the file."""
    suffix = Path(name).suffix.lower()
    if suffix in UNSUPPORTED_EXTENSIONS:
        raise ImageError(f"'{name}' is a {UNSUPPORTED_EXTENSIONS[suffix]} file, which is not supported; "
                         "export it as JPEG or PNG (or take a screenshot) and try again.")
    if not data:
        raise ImageError(f"'{name}' is empty (0 bytes); choose another photo.")
    if len(data) > max_mb * _MB:
        raise ImageError(f"'{name}' is {_size_mb(len(data))} MB; the limit is {max_mb:,g} MB for one photo. "
                         "Send a smaller photo (phone photos are usually 2-15 MB).")
    buf = io.BytesIO(data)
    buf.name = name
    return buf


def read_uploaded_photo(data: bytes, name: str = "the uploaded photo", max_mb: float = MAX_PHOTO_MB) -> Image.Image:
    """An uploaded photo as an upright RGB image, or ``ImageError`` with a plain message."""
    return load_rgb(photo_source(data, name, max_mb))
