"""The held-out rule: which readable photos train and which test, the same for every method.

``split_for`` is the one place a split is made: a seeded stratified split of
the readable photos (``random``: scikit-learn's ``train_test_split``), a
grouped one (``grouped``: photos of a likely plant or session, ``data.groups``, kept on
one side, classes stratified as far as the groups allow), or a separate test
folder. It depends only on the data, which photos are readable, the seed, the
test share and (grouped) the session groups, so every method tests on
exactly the same photos.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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


def stratified_split(labels: np.ndarray, *, test_size: float = 0.25, seed: int = 0) -> Split:
    """A seeded split that keeps each class's share in both parts (scikit-learn's train_test_split)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    _check_sizes(labels, test_size)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    return Split(np.sort(train_idx), np.sort(test_idx),
                 f"stratified random split, {test_size:.0%} held out for testing, seed {seed}", seed, test_size)


def grouped_split(labels: np.ndarray, groups: np.ndarray, *, test_size: float = 0.25, seed: int = 0) -> Split:
    """A seeded split that keeps every group (``data.groups``: a likely plant or session) on one side, each class's
    share as far as it can.

    Groups are visited in a seeded random order; a group is held out when
    every class it holds still has room in its held-out quota (``test_size``
    of the class, rounded), else it trains. Most groups are single photos, so
    the quotas fill exactly unless big groups are left at the end.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    _check_sizes(labels, test_size)
    classes, y = np.unique(labels, return_inverse=True)
    counts = np.bincount(y)
    quota = np.clip(np.round(test_size * counts).astype(int), 1, counts - 1)
    order = np.argsort(groups, kind="stable")
    starts = np.unique(groups[order], return_index=True)[1]
    members_of = np.split(order, starts[1:])
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for k in rng.permutation(len(members_of)):
        members = members_of[k]
        need = np.bincount(y[members], minlength=len(classes))
        if np.all(need <= quota):
            quota -= need
            test[members] = True
    for c, name in enumerate(classes):
        held = int(test[y == c].sum())
        if held == 0 or held == int((y == c).sum()):
            raise DatasetError(f"Class '{name}' cannot be split without separating photos of one session "
                               f"(its photos form too few groups); use the random split or add photos.")
    n_multi = sum(len(m) > 1 for m in members_of)
    return Split(np.flatnonzero(~test), np.flatnonzero(test),
                 f"grouped stratified split ({n_multi} group(s) of photos of a likely plant or session kept on one side), "
                 f"{test_size:.0%} held out for testing, seed {seed}", seed, test_size, "grouped")


def test_folder_split(n_train: int, n_test: int) -> Split:
    """All of the training folder trains; all of the separate test folder tests."""
    return Split(np.arange(n_train), np.arange(n_train, n_train + n_test), "separate test folder", 0, 0.0,
                 "folder")


def split_for(dataset: Dataset, test_dataset: Optional[Dataset], ok_train: np.ndarray,
              ok_test: Optional[np.ndarray], *, seed: int, test_size: float, split: str = "random",
              groups: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, Split]:
    """The split used by every method for this data: labels and paths of readable photos, and the split.

    ``split``: "random" or "grouped" (``groups``: the session group of each readable photo of
    ``dataset``); a separate ``test_dataset`` always decides the split itself.
    """
    if split not in SPLITS:
        raise DatasetError(f"Unknown split '{split}'. Choose one of: {', '.join(SPLITS)}.")
    labels = dataset.labels[ok_train]
    if test_dataset is None:
        paths = np.asarray(dataset.paths, dtype=object)[ok_train]
        if split == "grouped":
            return labels, paths, grouped_split(labels, groups, test_size=test_size, seed=seed)
        return labels, paths, stratified_split(labels, test_size=test_size, seed=seed)
    test_labels = test_dataset.labels[ok_test]
    all_labels = np.concatenate([labels, test_labels])
    all_paths = np.concatenate([np.asarray(dataset.paths, dtype=object)[ok_train],
                                np.asarray(test_dataset.paths, dtype=object)[ok_test]])
    return all_labels, all_paths, test_folder_split(len(labels), len(test_labels))
