"""The held-out rule: which readable photos train and which test, the same for every method.

``split_for`` is the one place a run's split is made: a seeded random split of
the readable photos (``random``), a grouped one (``grouped``: photos of a likely plant or session,
``data.groups``, kept on one side), or a separate test folder. It depends only on the data, which photos
are readable, the seed, the test share and (grouped) the session groups, so every method tests on
exactly the same photos.

**A photo's side never moves when other photos are added, moved or left out.** ``split_for`` gives each
photo a key (``photo_keys``: the MD5 of its content, from the file or from an object store's listing, so a
folder and its copy in a bucket split alike; a multipart object's ETag and size; its relpath as a last resort)
and holds it out when ``side_of(key, seed) < test_share``: a number in [0, 1) made from the key and the seed
alone. So a dataset version with photos added, moved to another class or left out tests on the
same photos as before, less the ones left out, and versions can be compared. Each class gets about the test
share held out (a binomial count: on the demo's 100 photos per class, 25 +- 4), not exactly that; a class the
rule leaves with no held-out photo (or nothing to train on) gets one moved across, the photo nearest the line
(the only case where a photo's side depends on others: classes of a handful of photos). Photos added by the
user from the field (``VersionedDataset.train_only``) always train unless added "to be tested too".
Grouped: a session group's side is ``side_of`` the smallest key among its members (not added by the user), so a
group keeps its side while its members are the same; an added photo that joins a held-out group is held out
with it (training on it would leak the session).

``stratified_split`` and ``grouped_split`` called without ``keys`` keep the older rule (exact shares:
scikit-learn's ``train_test_split``; groups in a seeded order filling each class's quota): the fine-tune's
validation split and the unseen-disease check use it on photos that are never edited.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toptune_core.data.dataset import Dataset, load_dataset
from toptune_core.errors import DatasetError


def load_data(data: str | Path | Dataset, test_data: Optional[str | Path] = None, *,
              home: Optional[str | Path] = None) -> tuple[Dataset, Optional[Dataset]]:
    """The dataset and, when given, the separate test folder (which must have the same classes).

    ``data``: a folder, or a ``Dataset`` already read; ``home``: the workspace whose edit list of the folder
    (``data.versions``) applies."""
    from toptune_core.data.versions import read_version

    if isinstance(data, Dataset):
        dataset = data
    else:
        dataset = read_version(home, data) if home is not None else load_dataset(data)
    test_dataset = load_dataset(test_data, classes=dataset.classes) if test_data else None
    return dataset, test_dataset


@dataclass(frozen=True)
class Split:
    """Which images train and which test, and how that was decided (recorded with every run)."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    method: str
    seed: int
    test_size: float
    kind: str = "random"  # "random", "grouped" or "folder"

    def describe(self) -> dict:
        return {"method": self.method, "kind": self.kind, "seed": self.seed, "test_size": self.test_size,
                "n_train": int(len(self.train_idx)), "n_test": int(len(self.test_idx))}


SPLITS = {"random": "stratified random split",
          "grouped": "grouped split: photos of a likely plant or session (near-duplicates too) kept on one side"}


def _check_sizes(labels: np.ndarray, test_size: float) -> None:
    if not 0 < test_size < 1:
        raise DatasetError(f"The test share must be between 0 and 1 (got {test_size}).")
    labels = np.asarray(labels)
    counts = Counter(labels.tolist())
    n_classes = len(counts)
    too_small = [c for c, n in counts.items() if n < 2]
    if too_small:
        raise DatasetError("Each class needs at least 2 photos (one to train, one to test); "
                           f"{len(too_small)} class(es) have only 1. Add photos or remove those folders.")
    n_test = int(np.ceil(test_size * len(labels)))
    if n_test < n_classes or len(labels) - n_test < n_classes:
        raise DatasetError(f"Too few photos ({len(labels)}) to hold out {test_size:.0%} for testing across "
                           f"{n_classes} classes. Add photos or change the test share.")


def photo_keys(dataset: Dataset) -> list[str]:
    """What fixes each photo's side of the split: the MD5 of its content, read from a file or given by an object
    store's listing (the ETag of a simple upload), so a folder and its copy in a bucket split alike; else (a
    multipart upload's ETag) the listed ETag and size; else its relpath."""
    from toptune_core.data import storage
    from toptune_core.files import content_hashes

    local = [i for i, p in enumerate(dataset.paths) if not storage.is_url(p)]
    hashes = dict(zip(local, content_hashes([dataset.paths[i] for i in local], algorithm="md5")))
    listed = dataset.versions or [None] * len(dataset)
    keys = []
    for i, rel in enumerate(dataset.relpaths):
        etag = str(listed[i]).rsplit("\t", 1)[-1].strip('"').lower() if listed[i] else ""
        if hashes.get(i):
            keys.append(f"md5:{hashes[i]}")
        elif _MD5.fullmatch(etag):
            keys.append(f"md5:{etag}")
        else:
            keys.append(f"listed:{listed[i]}" if listed[i] else f"path:{rel}")
    return keys


_MD5 = re.compile(r"[0-9a-f]{32}")


def side_of(keys: Sequence[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per key, from the key and the seed alone: below the test share is held out."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "big") / 2.0 ** 64
                     for k in keys])


def _at_least_one_each_side(test: np.ndarray, u: np.ndarray, y: np.ndarray, movable: np.ndarray) -> None:
    """A class with no held-out photo gets its movable photo nearest the line (the smallest ``u``) held out; one
    with every photo held out trains its photo nearest the line (the largest ``u``). In place."""
    for c in np.unique(y):
        members = np.flatnonzero((y == c) & movable)
        if len(members) < 2:
            continue
        if not test[members].any():
            test[members[np.argmin(u[members])]] = True
        elif test[y == c].all():
            test[members[np.argmax(u[members])]] = False


def _keyed_split(labels: np.ndarray, keys: Sequence[str], test_size: float, seed: int,
                 train_only: Optional[np.ndarray]) -> Split:
    y = np.asarray(labels)
    fixed = np.zeros(len(y), dtype=bool) if train_only is None else np.asarray(train_only, dtype=bool)
    u = side_of(keys, seed)
    test = (u < test_size) & ~fixed
    _at_least_one_each_side(test, u, y, ~fixed)
    if not test.any():
        raise DatasetError("No photo is left to test on: every photo was added to train. Add photos to be tested "
                           "too, or use a separate test folder.")
    return Split(np.flatnonzero(~test), np.flatnonzero(test),
                 f"stratified random split, about {test_size:.0%} of each class held out for testing (each photo's "
                 f"side fixed by its content), seed {seed}", seed, test_size)


def stratified_split(labels: np.ndarray, *, test_size: float = 0.25, seed: int = 0,
                     keys: Optional[Sequence[str]] = None, train_only: Optional[np.ndarray] = None) -> Split:
    """A seeded split that keeps each class's share in both parts. With ``keys`` (``photo_keys``): each photo's
    side fixed by its key (module docstring), ``train_only`` photos always training; without: scikit-learn's
    train_test_split (exact shares, but any change to the photos moves others)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    _check_sizes(labels, test_size)
    if keys is not None:
        return _keyed_split(labels, keys, test_size, seed, train_only)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    return Split(np.sort(train_idx), np.sort(test_idx),
                 f"stratified random split, {test_size:.0%} held out for testing, seed {seed}", seed, test_size)


def _keyed_grouped_split(y: np.ndarray, groups: np.ndarray, keys: Sequence[str], test_size: float, seed: int,
                         train_only: Optional[np.ndarray]) -> np.ndarray:
    """Held out (bool per photo): each group by ``side_of`` its smallest key not added by the user (a group of
    added photos only trains); then each class given a photo on each side, whole groups moved, if it can."""
    fixed = np.zeros(len(y), dtype=bool) if train_only is None else np.asarray(train_only, dtype=bool)
    ids, group_of = np.unique(groups, return_inverse=True)
    anchor: dict[int, str] = {}
    for i in np.flatnonzero(~fixed):
        g = int(group_of[i])
        anchor[g] = min(anchor.get(g, keys[i]), keys[i])
    group_u = np.full(len(ids), np.inf)
    anchored = sorted(anchor)
    group_u[anchored] = side_of([anchor[g] for g in anchored], seed)
    test = group_u[group_of] < test_size
    for c in np.unique(y[~fixed]):
        in_class = np.unique(group_of[(y == c) & ~fixed])
        if not test[y == c].any():
            test |= group_of == in_class[np.argmin(group_u[in_class])]
        elif test[y == c].all() and len(in_class) > 1:
            test &= group_of != in_class[np.argmax(group_u[in_class])]
    return test


def grouped_split(labels: np.ndarray, groups: np.ndarray, *, test_size: float = 0.25, seed: int = 0,
                  keys: Optional[Sequence[str]] = None, train_only: Optional[np.ndarray] = None) -> Split:
    """A seeded split that keeps every group (``data.groups``: a likely plant or session) on one side, each class's
    share as far as it can. With ``keys``: each group's side fixed by its members' keys (module docstring).

    Without ``keys``: groups are visited in a seeded random order; a group is held out when
    every class it holds still has room in its held-out quota (``test_size``
    of the class, rounded), else it trains. Most groups are single photos, so
    the quotas fill exactly unless big groups are left at the end.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    _check_sizes(labels, test_size)
    classes, y = np.unique(labels, return_inverse=True)
    order = np.argsort(groups, kind="stable")
    starts = np.unique(groups[order], return_index=True)[1]
    members_of = np.split(order, starts[1:])
    if keys is not None:
        test = _keyed_grouped_split(y, groups, keys, test_size, seed, train_only)
    else:
        test = _quota_grouped_split(y, members_of, len(classes), test_size, seed)
    fixed = np.zeros(len(y), dtype=bool) if train_only is None else np.asarray(train_only, dtype=bool)
    for c, name in enumerate(classes):
        held = int(test[y == c].sum())
        if (y[~fixed] == c).any() and (held == 0 or held == int((y == c).sum())):
            raise DatasetError(f"Class '{name}' cannot be split without separating photos of one session "
                               f"(its photos form too few groups); use the random split or add photos.")
    n_multi = sum(len(m) > 1 for m in members_of)
    share = f"about {test_size:.0%} of each class" if keys is not None else f"{test_size:.0%}"
    return Split(np.flatnonzero(~test), np.flatnonzero(test),
                 f"grouped stratified split ({n_multi} group(s) of photos of a likely plant or session kept on one "
                 f"side), {share} held out for testing, seed {seed}", seed, test_size, "grouped")


def _quota_grouped_split(y: np.ndarray, members_of: list, n_classes: int, test_size: float, seed: int) -> np.ndarray:
    """The older rule: groups in a seeded random order, each held out while every class it holds has room in its
    held-out quota (``test_size`` of the class, rounded)."""
    counts = np.bincount(y, minlength=n_classes)
    quota = np.clip(np.round(test_size * counts).astype(int), 1, counts - 1)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for k in rng.permutation(len(members_of)):
        members = members_of[k]
        need = np.bincount(y[members], minlength=n_classes)
        if np.all(need <= quota):
            quota -= need
            test[members] = True
    return test


def test_folder_split(n_train: int, n_test: int) -> Split:
    """All of the training folder trains; all of the separate test folder tests."""
    return Split(np.arange(n_train), np.arange(n_train, n_train + n_test), "separate test folder", 0, 0.0,
                 "folder")


def split_for(dataset: Dataset, test_dataset: Optional[Dataset], ok_train: np.ndarray,
              ok_test: Optional[np.ndarray], *, seed: int, test_size: float, split: str = "random",
              groups: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, Split]:
    """The split used by every method for this data: labels and paths of readable photos, and the split.

    ``split``: "random" or "grouped" (``groups``: the session group of each readable photo of
    ``dataset``); a separate ``test_dataset`` always decides the split itself. Each photo's side is fixed by its
    content (``photo_keys``), photos the user added (``train_only``) train.
    """
    if split not in SPLITS:
        raise DatasetError(f"Unknown split '{split}'. Choose one of: {', '.join(SPLITS)}.")
    labels = dataset.labels[ok_train]
    if test_dataset is None:
        paths = np.asarray(dataset.paths, dtype=object)[ok_train]
        keys = np.asarray(photo_keys(dataset), dtype=object)[ok_train].tolist()
        added = set(getattr(dataset, "train_only", ()))
        train_only = np.array([rel in added for rel in dataset.relpaths], dtype=bool)[ok_train]
        if split == "grouped":
            return labels, paths, grouped_split(labels, groups, test_size=test_size, seed=seed, keys=keys,
                                                train_only=train_only)
        return labels, paths, stratified_split(labels, test_size=test_size, seed=seed, keys=keys,
                                               train_only=train_only)
    test_labels = test_dataset.labels[ok_test]
    all_labels = np.concatenate([labels, test_labels])
    all_paths = np.concatenate([np.asarray(dataset.paths, dtype=object)[ok_train],
                                np.asarray(test_dataset.paths, dtype=object)[ok_test]])
    return all_labels, all_paths, test_folder_split(len(labels), len(test_labels))
