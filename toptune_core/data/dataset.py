"""Datasets: a folder of labelled photos and its fingerprint (the held-out rule is ``data.split``).

Two layouts are read:

* ImageFolder: ``ROOT/<class name>/**/*.jpg``; the class is the folder name.
* Eden Library: ``ROOT/<Eden dataset folder>/`` side by side, one per species
  and condition, e.g. ``Black nightsade-220519-Weed-zz-V1-20210225102034``
  (images directly inside) or ``Cucumber-Cucumis_sativus-Healthy-PRX-RGB-NA-20210607``
  (images in ``images/``). The class is the folder-name prefix before the first
  ``-``, as in Eden's notebooks; folders with the same prefix are merged.

``ROOT`` is a folder or an object-store prefix (``s3://BUCKET/PREFIX``, one
sub-prefix per class, read through ``data.storage``); the photos' locations
are ``Path`` or ``storage.ObjectURL``, and everything after the listing opens
them through ``data.images.load_rgb``, whichever store holds them.

Scanning reads directory entries (or one object listing) only, no pixels;
non-image files are skipped and counted so the user can see them. Unreadable
images are found and reported when features are extracted.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np

from toptune_core.errors import DatasetError
from toptune_core.data import storage
from toptune_core.data.images import UNSUPPORTED_EXTENSIONS, is_image_file
from toptune_core.data.storage import Location, ObjectURL

# "<Common name>-<DDMMYY>-<condition>-zz-..." / "<Common>-<Genus_species>-<condition>-PRX-RGB-NA-<YYYYMMDD>"
_EDEN_FOLDER = re.compile(r"^[^-]+-.+-(zz|PRX)(-|$)")


def is_eden_folder(name: str) -> bool:
    """True for an Eden Library dataset folder name (see the module docstring)."""
    return bool(_EDEN_FOLDER.match(name))


def eden_label(folder_name: str) -> str:
    """The class of an Eden dataset folder: its name up to the first ``-``."""
    return folder_name.split("-", 1)[0].strip()


@dataclass
class Dataset:
    """Labelled photos found under ``root``.

    ``paths[i]`` has class ``classes[labels[i]]``. ``skipped`` lists files that are
    not used, as ``(path relative to root, reason)``; ``warnings`` are plain-word
    notes for the user (empty class folders, small or unbalanced classes).
    ``versions[i]``: what the listing said of photo ``i`` (an object's size and
    ETag); None (the list, or one entry) for a file, looked at when fingerprinted.
    """

    root: Location
    classes: list[str]
    paths: list[Location]
    labels: np.ndarray
    layout: str = "imagefolder"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    versions: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def relpaths(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels.tolist())
        return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """Changes when any image is added, removed, renamed, relabelled or modified (for objects: a new ETag
        or size in the listing the dataset was read from)."""
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode())
        listed = self.versions or [None] * len(self.paths)
        for rel, path, label, version in zip(self.relpaths, self.paths, self.labels.tolist(), listed):
            if version is None:  # a file: looked at now
                try:
                    st = Path(path).stat()
                except OSError as e:
                    raise DatasetError(f"'{rel}' disappeared or became unreadable while the dataset was being read "
                                       f"({e.strerror}). Check the folder and try again.") from None
                version = f"{st.st_size}\t{st.st_mtime_ns}"
            h.update(f"\n{rel}\t{label}\t{version}".encode())
        return h.hexdigest()[:32]

    def subset(self, indices: Sequence[int]) -> "Dataset":
        idx = list(indices)
        return Dataset(self.root, self.classes, [self.paths[i] for i in idx], self.labels[idx], self.layout,
                       versions=None if self.versions is None else [self.versions[i] for i in idx])


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _usable_name(name: str) -> bool:
    """False for a name that is not valid UTF-8 on disk (it could not be stored, shown or written to a CSV)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A name that can be shown and stored: undecodable bytes appear as ``\\xe9``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _images_under(folder: Path, root: Path, skipped: list[tuple[str, str]],
                  seen_dirs: set[tuple[int, int]]) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted); everything else goes to ``skipped``.

    Symbolic links to folders are followed once: a link back to a folder already
    seen (a loop, or the same photos twice) is skipped. Only regular files are
    kept: a broken link, a pipe or a device named ``x.jpg`` would fail or block
    later.
    """
    found = []

    def rel(path: Path) -> str:
        return _shown(path.relative_to(root).as_posix())

    def unreadable_dir(err: OSError) -> None:
        where = rel(Path(err.filename)) if err.filename else rel(folder)
        skipped.append((where, f"folder cannot be read ({err.strerror})"))

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable_dir):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            skipped.append((rel(Path(dirpath)), "folder link to a folder already read (skipped to avoid a loop)"))
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        for d in dirnames:
            if _visible(Path(d)) and not _usable_name(d):
                skipped.append((rel(Path(dirpath) / d), "folder name is not valid UTF-8; rename the folder"))
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)) and _usable_name(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not _visible(path):
                continue
            if not _usable_name(name):
                skipped.append((rel(path), "file name is not valid UTF-8; rename the file"))
                continue
            if not is_image_file(path):
                skipped.append((rel(path), _skip_reason(name)))
                continue
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:
                skipped.append((rel(path), "broken link or unreadable file"))
                continue
            if not regular:
                skipped.append((rel(path), "not a regular file (a pipe, device or socket)"))
                continue
            found.append(path)
    return found


def _skip_reason(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return (f"{UNSUPPORTED_EXTENSIONS[suffix]} is not supported; export as JPEG"
            if suffix in UNSUPPORTED_EXTENSIONS else "not an image file")


def _read_folder(root: Path) -> tuple[Path, dict[str, list[Path]], list[tuple[str, str]]]:
    """The class folders of a dataset folder and the photos under each, and the files skipped."""
    if not root.exists():
        raise DatasetError(f"The dataset folder '{root}' does not exist. Check the path.")
    if not root.is_dir():
        hint = " Unzip it first, or upload the zip in the dashboard." if root.suffix.lower() == ".zip" else ""
        raise DatasetError(f"'{root}' is a file, not a folder. A dataset is a folder with one sub-folder per class.{hint}")
    root = root.resolve()
    skipped: list[tuple[str, str]] = []
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise DatasetError(f"The dataset folder '{root}' cannot be read ({e.strerror}).") from None
    subdirs = []
    for p in entries:
        if not (_visible(p) and p.is_dir()):
            continue
        if _usable_name(p.name):
            subdirs.append(p)
        else:
            skipped.append((_shown(p.name), "class folder name is not valid UTF-8; rename the folder"))
    for p in entries:
        if p.is_file() and _visible(p) and is_image_file(p):
            skipped.append((_shown(p.name), "image outside any class folder"))
    seen_dirs: set[tuple[int, int]] = set()
    return root, {d.name: _images_under(d, root, skipped, seen_dirs) for d in subdirs}, skipped


def _read_objects(root: ObjectURL) -> tuple[ObjectURL, dict[str, list[ObjectURL]], list[tuple[str, str]], dict]:
    """The class sub-prefixes of an object-store dataset and the photos under each (one listing), the objects
    skipped, and each photo's version (size and ETag)."""
    by_folder: dict[str, list[ObjectURL]] = {}
    skipped: list[tuple[str, str]] = []
    versions: dict[str, str] = {}
    for obj in storage.list_objects(root):
        rel = obj.url.relative_to(root)
        if not all(_visible(PurePosixPath(part)) for part in rel.parts):
            continue
        if len(rel.parts) == 1:
            if is_image_file(obj.url):
                skipped.append((rel.as_posix(), "image outside any class folder"))
            continue
        photos = by_folder.setdefault(rel.parts[0], [])
        if not is_image_file(obj.url):
            skipped.append((rel.as_posix(), _skip_reason(obj.url.name)))
        else:  # an empty or corrupt object is reported when features are extracted, as a file is
            photos.append(obj.url)
            versions[obj.url] = obj.version
    return root, by_folder, skipped, versions


def load_dataset(root: str | Path, *, classes: Optional[Sequence[str]] = None, min_classes: int = 2) -> Dataset:
    """Scan a dataset folder or object-store prefix (ImageFolder or Eden layout).

    ``classes``: force this class list (for a separate test folder, so labels
    line up with the training data); a folder of another name is an error.
    """
    versions = None
    if storage.is_url(root):
        root, folders, skipped, versions = _read_objects(ObjectURL(root))
    else:
        root, folders, skipped = _read_folder(Path(root).expanduser())
    if not folders:
        raise DatasetError(f"'{root}' has no class folders. Put the photos of each class in a sub-folder named after the class.")

    eden = all(is_eden_folder(name) for name in folders)
    by_class: dict[str, list[Location]] = {}
    for name, files in folders.items():
        by_class.setdefault(eden_label(name) if eden else name, []).extend(files)

    warnings = []
    empty = sorted(c for c, files in by_class.items() if not files)
    if empty:
        warnings.append("Empty class folder(s) ignored: " + ", ".join(f"'{c}'" for c in empty) + ".")
    by_class = {c: files for c, files in by_class.items() if files}

    if classes is not None:
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DatasetError(f"The test folder has classes not in the training data: {', '.join(unknown)}. "
                               f"The training classes are: {', '.join(classes)}.")
        class_list = list(classes)
    else:
        class_list = sorted(by_class)
        if len(class_list) == 0:
            raise DatasetError(f"No images found in '{root}'. Supported formats: JPEG, PNG, BMP, GIF, TIFF, WebP.")
        if len(class_list) < min_classes:
            raise DatasetError(f"'{root}' has only one class ('{class_list[0]}') with images; a classifier needs "
                               f"at least {min_classes} classes. Add a folder of photos for each other class.")

    paths, labels = [], []
    for i, c in enumerate(class_list):
        files = by_class.get(c, [])
        paths.extend(files)
        labels.extend([i] * len(files))
    if skipped:
        warnings.append(f"{len(skipped)} file(s) skipped (not images, outside class folders, or unusable; see the list).")
    counts = Counter(labels)
    if counts and classes is None:
        small = [class_list[i] for i, n in sorted(counts.items()) if n < 10]
        if small:
            warnings.append("Very few photos (under 10) in: " + ", ".join(small) + "; results will be unreliable.")
        if max(counts.values()) > 5 * min(counts.values()):
            warnings.append("Classes are strongly unbalanced (largest over 5x the smallest); look at balanced accuracy.")
    return Dataset(root, class_list, paths, np.asarray(labels, dtype=np.int64), "eden" if eden else "imagefolder",
                   skipped, warnings, None if versions is None else [versions[p] for p in paths])
