"""'Download this dataset version': the photos of a dataset version as a zip of class folders.

``<class>/<photo file name>`` for every photo of the version, each under the
class it has in the version (a moved photo under its new class, an added one
under its class, left-out photos absent), so that unzipping it gives a folder
any tool (this one too) reads as that version. Two photos with the same file
name in one class get ``-2``, ``-3``... The photos are stored as they are (not
recompressed, not re-encoded).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional

from toptune_core.data import storage
from toptune_core.data.dataset import Dataset
from toptune_core.data.versions import ADDED_PREFIX
from toptune_core.errors import DatasetError, ImageError
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter


def member_names(dataset: Dataset) -> list[str]:
    """The zip member name of each photo of ``dataset``, in dataset order."""
    taken: set[str] = set()
    names = []
    for rel, label in zip(dataset.relpaths, dataset.labels.tolist()):
        base = PurePosixPath(rel.removeprefix(ADDED_PREFIX)).name
        stem, suffix = PurePosixPath(base).stem, PurePosixPath(base).suffix
        name, n = f"{dataset.classes[label]}/{base}", 1
        while name.lower() in taken:
            n += 1
            name = f"{dataset.classes[label]}/{stem}-{n}{suffix}"
        taken.add(name.lower())
        names.append(name)
    return names


def version_zip(dataset: Dataset, *, progress: Optional[ProgressCallback] = None,
                should_cancel: Optional[CancelCheck] = None) -> bytes:
    """The zip's bytes; ``DatasetError`` naming the first photo that disappeared meanwhile."""
    meter = ProgressMeter("zip", len(dataset), progress, "photos", should_cancel)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, (path, name) in enumerate(zip(dataset.paths, member_names(dataset))):
            try:
                if storage.is_url(path):
                    zf.writestr(name, storage.read_bytes(path))
                else:
                    zf.write(Path(path), name)
            except OSError as e:
                raise DatasetError(f"'{dataset.relpaths[i]}' cannot be read any more ({e.strerror}); nothing was "
                                   "downloaded. Check the folder and try again.") from None
            except ImageError as e:  # an object that cannot be read
                raise DatasetError(f"{e} Nothing was downloaded.") from None
            if i % 50 == 0:
                meter.update(i + 1)
    meter.update(len(dataset))
    return buf.getvalue()
