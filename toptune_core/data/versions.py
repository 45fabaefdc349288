"""Dataset versions: a never-destructive edit list over a dataset source, kept in the workspace.

The user's folder, zip or Eden download (the *source*) is never modified. What a
user changes is an *edit list* in their workspace (``home``: the data folder in
local mode, the visitor's private folder in shared mode), applied every time the
dataset is read:

* ``move``: a photo of the source (or an added one) gets another, existing class;
* ``leave_out``: a photo is not used;
* ``keep``: a photo was reviewed and its label kept (``reviewed``: not shown as a
  suspect again); it changes nothing in the dataset;
* ``add``: a field photo, stored in the workspace by its SHA-256 (checked each
  time the version is read), with a class, which may be a new one, and the user's own
  file name (``name``). It always trains (``VersionedDataset.train_only``) unless added
  with ``may_test=True`` (then the split decides, as for any photo: ``data.split``).

Each edit has an id; ``undo(edit_id)`` cancels it (the history keeps it, marked
undone). The same photo may be edited several times: the edits apply in order.

Usage::

    from toptune_core.data.versions import DatasetVersions

    versions = DatasetVersions.open(home, "/path/to/photos")   # the source folder (any layout load_dataset reads)
    versions.move("healthy/a.jpg", "bean_rust")                 # -> Edit; relpaths as Dataset.relpaths gives them
    versions.leave_out("healthy/b.jpg")
    versions.keep("healthy/c.jpg")
    versions.reviewed                                           # {"healthy/c.jpg", "healthy/a.jpg"}: kept or moved
    versions.add_photos([("leaf.jpg", jpeg_bytes)], "new class")  # -> [Edit]; all photos checked before any is kept
    shown_name(edit.path)                                       # "leaf.jpg": the user's name (else the relpath)
    versions.undo(edit_id)
    versions.edits                                              # active edits, oldest first (history: all_edits)
    dataset = versions.dataset()                                # a VersionedDataset: a Dataset with the edits applied

``VersionedDataset`` is a ``dataset.Dataset``: ``paths`` (added photos lie in the
workspace), ``relpaths`` (an added photo's is ``+added/<sha16>-<name>``),
``labels``, ``classes`` (sorted; a class left with no photo disappears, a new
class appears), ``fingerprint()`` (covers every edit; with no edit it equals the
source's, so the feature cache is shared), ``version`` (``{"id", "source",
"edit_ids", "summary": {"added", "moved", "left_out"}}``). Train on it by handing
it to ``experiment.run_experiment`` / ``run_toptuning`` as ``data``, or hand them the folder: a run reads the
folder through its workspace's edit list (``read_version``). What runs record about versions is
``data.version_history``.

Bad input raises a ``DatasetError`` / ``ImageError`` with one line and changes
nothing: an unreadable added photo, a class name that is empty, too long or a
path, a move to a class the version does not have, a photo the version does not
have, an edit id that is unknown or already undone; reading a version whose
photos have disappeared (from the source or the workspace) raises one too.
Writes are a read-modify-write of ``edits.json`` under a file lock, replaced
atomically, so two tabs never lose each other's edits.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from toptune_core.data import storage
from toptune_core.data.dataset import Dataset, load_dataset
from toptune_core.data.uploads import read_uploaded_photo
from toptune_core.errors import DatasetError
from toptune_core.files import file_sha256, locked, write_atomic

#: Longest class name accepted (characters).
MAX_CLASS_NAME = 60
#: Where added photos appear among a version's relpaths (not a folder of the source).
ADDED_PREFIX = "+added/"
KINDS = ("move", "leave_out", "keep", "add")
_FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                  "WEBP": ".webp", "AVIF": ".avif"}


@dataclass(frozen=True)
class Edit:
    """One edit. ``path``: the photo's relpath; ``to``: its class (move, add); ``sha256``, ``name`` (the user's
    file name) and ``may_test`` (may be held out for testing): an added photo's."""

    id: int
    kind: str
    path: str
    to: Optional[str] = None
    sha256: Optional[str] = None
    time: float = 0.0
    undone: Optional[float] = None  # when it was undone
    name: Optional[str] = None
    may_test: bool = False

    def describe(self) -> str:
        shown = self.name or shown_name(self.path)
        if self.kind == "move":
            return f"moved {shown} to {self.to}"
        if self.kind == "add":
            return f"added your photo {shown} as {self.to}" + (" (may be held out for testing)" if self.may_test
                                                              else "")
        return f"left out {shown}" if self.kind == "leave_out" else f"kept {shown} as it is"


_ADDED_NAME = re.compile(r"^[0-9a-f]{16}-")


def shown_name(relpath: str, names: Optional[dict] = None) -> str:
    """A photo's relpath as a person knows it: an added photo by its file name (``names``: relpath -> the name the
    user gave, from the edits; else the stored name without its hash), a photo of the folder by its relpath."""
    if not str(relpath).startswith(ADDED_PREFIX):
        return str(relpath)
    if names and relpath in names:
        return names[relpath]
    return _ADDED_NAME.sub("", str(relpath)[len(ADDED_PREFIX):])


def check_class_name(name: str) -> str:
    """The class name, stripped; ``DatasetError`` if it is empty, too long or a path."""
    name = (name or "").strip()
    if not name:
        raise DatasetError("The class name is empty; type a name such as 'bean_rust'.")
    if len(name) > MAX_CLASS_NAME:
        raise DatasetError(f"The class name is {len(name)} characters long; the limit is {MAX_CLASS_NAME}.")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or not name.isprintable():
        shown = name.encode("unicode_escape").decode()[:40]
        raise DatasetError(f"'{shown}' cannot be a class name: no slashes, no leading dot, no control characters.")
    return name


def _resolved(source: str | Path):
    """A folder's resolved path; an ``s3://`` prefix as its normalised URL."""
    return storage.ObjectURL(source) if storage.is_url(source) else Path(source).expanduser().resolve()


def source_key(source: str | Path) -> str:
    """The folder name of a source's edit list: a hash of its resolved path (or its URL)."""
    return hashlib.sha256(str(_resolved(source)).encode()).hexdigest()[:16]


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._")
    return stem[:40] or "photo"


class DatasetVersions:
    """The edit list of one dataset source in one workspace: ``<home>/versions/<source_key>/``."""

    def __init__(self, home: str | Path, source: str | Path,
                 check_room: Optional[Callable[[int], None]] = None):
        self.source = _resolved(source)
        self.folder = Path(home) / "versions" / source_key(self.source)
        self.photos_dir = self.folder / "photos"
        self.path = self.folder / "edits.json"
        self.check_room = check_room  # shared mode: Visitor.check_room (raises LimitReached)

    @classmethod
    def open(cls, home: str | Path, source: str | Path,
             check_room: Optional[Callable[[int], None]] = None) -> "DatasetVersions":
        return cls(home, source, check_room)

    # --- the edit list on disk -------------------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("edits"), list):
                raise ValueError
        except FileNotFoundError:
            data = {"source": str(self.source), "next_id": 1, "edits": []}
        except (OSError, ValueError):
            raise DatasetError(f"The edit list '{self.path}' is damaged; nothing was changed. Move it away to start "
                               "again from the original photos.") from None
        return data

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The edit list, locked for a read-modify-write; saved atomically when the block ends without error."""
        with locked(self.folder / ".edits.lock"):
            data = self._load()
            yield data
            write_atomic(self.path, json.dumps(data, indent=1).encode())

    @property
    def all_edits(self) -> list[Edit]:
        """Every edit ever made, undone ones included, oldest first."""
        return [Edit(**e) for e in self._load()["edits"]]

    @property
    def edits(self) -> list[Edit]:
        """The active edits (not undone), oldest first."""
        return [e for e in self.all_edits if e.undone is None]

    @property
    def names(self) -> dict[str, str]:
        """The user's file name of each added photo, by relpath (for ``shown_name``)."""
        return {e.path: e.name for e in self.all_edits if e.kind == "add" and e.name}

    @property
    def reviewed(self) -> set[str]:
        """Relpaths whose label a person looked at: kept as they are, or moved (not suspects any more)."""
        return {e.path for e in self.edits if e.kind in ("keep", "move")}

    def _append(self, data: dict, kind: str, path: str, to: Optional[str] = None,
                sha256: Optional[str] = None, **extra) -> Edit:
        edit = Edit(int(data["next_id"]), kind, path, to, sha256, time.time(), **extra)
        data["next_id"] = edit.id + 1
        data["edits"].append({k: v for k, v in edit.__dict__.items()})
        return edit

    # --- edits --------------------------------------------------------------------------------------------------

    def _photo_of(self, relpath: str, edits: list[Edit]) -> tuple[str, str]:
        """(relpath, its class in the current version); ``DatasetError`` if the version does not have it."""
        ds = self.dataset(edits)
        try:
            i = ds.relpaths.index(relpath)
        except ValueError:
            raise DatasetError(f"'{str(relpath)[:120]}' is not a photo of this dataset version; nothing was "
                               "changed.") from None
        return relpath, ds.classes[ds.labels[i]]

    def move(self, relpath: str, to_class: str) -> Edit:
        """Give a photo another class, one the version already has."""
        with self._locked() as data:
            edits = [Edit(**e) for e in data["edits"] if e.get("undone") is None]
            ds = self.dataset(edits)
            to_class = (to_class or "").strip()
            if to_class not in ds.classes:
                raise DatasetError(f"There is no class '{to_class[:60]}' in this dataset version; the classes are: "
                                   f"{', '.join(ds.classes)}. Nothing was changed.")
            _, given = self._photo_of(relpath, edits)
            if given == to_class:
                raise DatasetError(f"'{relpath}' is already in class '{to_class}'; nothing was changed.")
            return self._append(data, "move", relpath, to_class)

    def leave_out(self, relpath: str) -> Edit:
        """Stop using a photo (the file stays where it is)."""
        with self._locked() as data:
            self._photo_of(relpath, [Edit(**e) for e in data["edits"] if e.get("undone") is None])
            return self._append(data, "leave_out", relpath)

    def keep(self, relpath: str) -> Edit:
        """Mark a photo's label as reviewed and right (it is not shown as a suspect again)."""
        with self._locked() as data:
            self._photo_of(relpath, [Edit(**e) for e in data["edits"] if e.get("undone") is None])
            return self._append(data, "keep", relpath)

    def add_photos(self, photos: Sequence[tuple[str, bytes]], label: str, *, may_test: bool = False) -> list[Edit]:
        """Add field photos ``[(file name, bytes)]`` with class ``label`` (a new class is allowed); they always
        train unless ``may_test`` (then the split may hold them out, as any photo).

        Every photo is read (``ImageError`` names the first one that cannot be) and the class name checked
        before anything is stored; a photo already in this version is refused too.
        """
        label = check_class_name(label)
        if not photos:
            raise DatasetError("No photo was given to add.")
        checked = []
        for name, data in photos:
            image = read_uploaded_photo(data, name)
            suffix = _FORMAT_SUFFIX.get(getattr(image, "format", None) or "", None) or _suffix_of(data, name)
            checked.append((name, data, hashlib.sha256(data).hexdigest(), suffix))
        if len({sha for _, _, sha, _ in checked}) < len(checked):
            raise DatasetError("The same photo was given twice; nothing was added.")
        if self.check_room is not None:
            self.check_room(sum(len(d) for _, d, _, _ in checked))
        with self._locked() as data:
            present = {e["sha256"]: e["path"] for e in data["edits"]
                       if e["kind"] == "add" and e.get("undone") is None}
            for name, _, sha, _ in checked:
                if sha in present:
                    raise DatasetError(f"'{name}' is already in this dataset version ({present[sha]}); nothing was "
                                       "added.")
            self.photos_dir.mkdir(parents=True, exist_ok=True)
            added = []
            for name, blob, sha, suffix in checked:
                stored = self.photos_dir / f"{sha}{suffix}"
                if not (stored.is_file() and file_sha256(stored) == sha):
                    write_atomic(stored, blob)
                added.append(self._append(data, "add", f"{ADDED_PREFIX}{sha[:16]}-{_safe_name(name)}{suffix}",
                                          label, sha, name=Path(str(name)).name[:120], may_test=may_test))
            return added

    def undo(self, edit_id: int) -> Edit:
        """Cancel an edit; an added photo's file is removed once no active edit uses it."""
        with self._locked() as data:
            entry = next((e for e in data["edits"] if e["id"] == int(edit_id)), None)
            if entry is None:
                raise DatasetError(f"There is no edit #{edit_id} in this dataset's edit list; nothing was changed.")
            if entry.get("undone") is not None:
                raise DatasetError(f"Edit #{edit_id} was already undone; nothing was changed.")
            entry["undone"] = time.time()
            undone = Edit(**entry)
            if undone.kind == "add":
                for later in data["edits"]:  # edits of the added photo go with it
                    if later["path"] == undone.path and later.get("undone") is None:
                        later["undone"] = entry["undone"]
        if undone.kind == "add" and not any(e.sha256 == undone.sha256 for e in self.edits):
            for stored in self.photos_dir.glob(f"{undone.sha256}.*"):
                stored.unlink(missing_ok=True)
        return undone

    # --- the version ------------------------------------------------------------------------------------------

    def dataset(self, edits: Optional[list[Edit]] = None) -> "VersionedDataset":
        """The source read now, with the edits applied (``edits``: the active ones by default)."""
        edits = self.edits if edits is None else edits
        base = load_dataset(self.source)
        return apply_edits(base, edits, self.photos_dir, str(self.source))


def read_version(home: str | Path, source: str | Path) -> Dataset:
    """The dataset in ``source`` as this workspace sees it: with its edit list applied when it has one (a
    ``VersionedDataset``), else the folder as it is."""
    versions = DatasetVersions(home, source)
    if not versions.path.is_file():
        return load_dataset(source)
    return versions.dataset()


def _suffix_of(data: bytes, name: str) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _FORMAT_SUFFIX.get(im.format or "", Path(name).suffix.lower() or ".jpg")
    except Exception:  # read_uploaded_photo accepted it, so this is not reached in practice
        return Path(name).suffix.lower() or ".jpg"


def _stored_photo(photos_dir: Path, edit: Edit) -> Path:
    found = sorted(photos_dir.glob(f"{edit.sha256}.*"))
    if not found or file_sha256(found[0]) != edit.sha256:
        what = "is missing" if not found else "was changed on disk"
        raise DatasetError(f"The added photo {edit.path.removeprefix(ADDED_PREFIX)} {what} in '{photos_dir}'; "
                           f"undo edit #{edit.id} on the Data page, or put it back.")
    return found[0]


def apply_edits(base: Dataset, edits: list[Edit], photos_dir: Path, source: str) -> "VersionedDataset":
    """``base`` with ``edits`` applied in order; ``DatasetError`` when an edit's photo is gone."""
    label_of: dict[str, str] = {rel: base.classes[i] for rel, i in zip(base.relpaths, base.labels.tolist())}
    path_of: dict[str, Path] = dict(zip(base.relpaths, base.paths))
    listed = dict(zip(base.relpaths, base.versions)) if base.versions is not None else None  # objects' ETags
    missing = []
    for e in edits:
        if e.kind == "add":
            path_of[e.path] = _stored_photo(photos_dir, e)
            label_of[e.path] = str(e.to)
        elif e.path not in label_of:
            missing.append(e)
        elif e.kind == "move":
            label_of[e.path] = str(e.to)
        elif e.kind == "leave_out":
            del label_of[e.path]
    if missing:
        raise DatasetError(f"{len(missing)} edit(s) name photos no longer in '{source}' (e.g. '{missing[0].path}', "
                           f"edit #{missing[0].id}); put the photos back or undo those edits on the Data page.")
    classes = sorted(set(label_of.values()))
    if len(classes) < 2:
        raise DatasetError("This dataset version has fewer than 2 classes with photos; undo some edits.")
    index = {c: i for i, c in enumerate(classes)}
    position = {rel: i for i, rel in enumerate(label_of)}  # the source's order, then added photos in order
    order = sorted(label_of, key=lambda rel: (index[label_of[rel]], position[rel]))
    summary = {"added": sum(e.kind == "add" for e in edits), "moved": sum(e.kind == "move" for e in edits),
               "left_out": sum(e.kind == "leave_out" for e in edits)}
    version = {"source": source, "edit_ids": [e.id for e in edits if e.kind != "keep"], "summary": summary}
    train_only = frozenset(e.path for e in edits if e.kind == "add" and not e.may_test and e.path in label_of)
    return VersionedDataset(base.root, classes, [path_of[r] for r in order],
                            np.asarray([index[label_of[r]] for r in order], dtype=np.int64), base.layout,
                            list(base.skipped), list(base.warnings),
                            None if listed is None else [listed.get(r) for r in order], names=order, version=version,
                            train_only=train_only)


@dataclass
class VersionedDataset(Dataset):
    """A ``Dataset`` with edits applied: ``names`` are its relpaths (added photos lie outside ``root``);
    ``train_only``: relpaths of added photos that always train (``data.split``)."""

    names: list[str] = field(default_factory=list)
    version: dict = field(default_factory=dict)
    train_only: frozenset = frozenset()

    def __post_init__(self) -> None:
        if self.names and not self.version.get("id"):
            self.version = {**self.version, "id": self.fingerprint()[:12]}

    @property
    def relpaths(self) -> list[str]:
        return list(self.names)

    def subset(self, indices: Sequence[int]) -> "VersionedDataset":
        idx = list(indices)
        return VersionedDataset(self.root, self.classes, [self.paths[i] for i in idx], self.labels[idx], self.layout,
                                versions=None if self.versions is None else [self.versions[i] for i in idx],
                                names=[self.names[i] for i in idx], version=self.version,
                                train_only=self.train_only)
