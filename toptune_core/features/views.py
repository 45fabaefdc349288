"""Views of a photo: the flips and rotations that show the same leaf, as part of what decides its features.

A leaf photo has no "up": turned or mirrored it is the same leaf. A **view
set** names the views each photo is seen in; the extractor cuts every view
from one decode (``cut``) and runs them through the engine in the same
batches, so a photo's features are ``(n_views, dim)`` and a dataset's
``(n_photos, n_views, dim)``. The view set is part of the feature cache's
identity (``FeatureExtractor.cache_identity``), like the backbone and the
input resolution.

How the views are used, everywhere (fastai's ``Learner.tta`` is the anchor):

* top classifiers train on every view of each training photo (``flatten``),
  and every group-aware step (cross-validation folds, the kernel's
  leave-one-out, the split) gets one group per photo, so a photo's views
  always travel together (``flatten`` repeats the photo's group);
* a prediction averages the class probabilities over the photo's views
  (``average``): held-out evaluation, Classify, ``predict``, the exported
  bundle, a Ray extraction's features;
* the familiarity check and nearest-neighbour evidence compare one vector per
  photo (``photo_embedding``: the mean of its L2-normalised views).

Views are cut from the model's square input crop, so they cost nothing but
model passes: ``n_views`` per photo, once, into the cache.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from toptune_core.errors import ToptuneError

#: Each view as (quarter turns counter-clockwise, then mirror left-right). Identity first, always.
VIEW_SETS: dict[str, tuple[tuple[int, bool], ...]] = {
    "1": ((0, False),),
    "flip": ((0, False), (0, True)),
    "dihedral": ((0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False), (3, True)),
}

LABELS = {"1": "the photo as it is (1 view)", "flip": "the photo and its mirror image (2 views)",
          "dihedral": "every flip and quarter turn (8 views)"}

#: The view set of the dashboard and the command line (chosen by the estimate for new photos; see README).
DEFAULT_VIEWS = "dihedral"

#: Every view set is the start of this one, so a photo's first k views are the same views whatever the set: the
#: feature cache stores the first k views of ``ORDER`` and a larger set only adds the views it lacks (stages).
ORDER = VIEW_SETS["dihedral"]
assert all(ORDER[:len(steps)] == steps for steps in VIEW_SETS.values()), "a view set must be a prefix of ORDER"

#: The stages of a progressive extraction (``stages_for``): the photo as it is first, then the rest.
FIRST_STAGE = "1"


def check_views(name: Optional[str]) -> str:
    """``name`` if it is a view set (None: ``DEFAULT_VIEWS``), else a one-line error."""
    name = DEFAULT_VIEWS if name is None else str(name)
    if name not in VIEW_SETS:
        raise ToptuneError(f"Unknown view set '{name}'. Choose one of: {', '.join(VIEW_SETS)}.")
    return name


def n_views(name: str) -> int:
    return len(VIEW_SETS[check_views(name)])


def stages_for(name: str) -> list[str]:
    """The view sets a progressive extraction of ``name`` fits a model on, in order: the first view alone (when
    ``name`` has more), then ``name``."""
    name = check_views(name)
    return [FIRST_STAGE, name] if n_views(name) > 1 else [name]


def cut(pixels: np.ndarray, name: str, start: int = 0) -> np.ndarray:
    """(N, S, S, 3) uint8 square crops -> (N * (n_views - start), S, S, 3): each photo's views from the
    ``start``-th on together, in the set's order (photo-major), contiguous for the engine. All views of set
    "1" return ``pixels`` itself."""
    steps = VIEW_SETS[check_views(name)][start:]
    if not steps:
        raise ToptuneError(f"View set '{name}' has no view number {start + 1}.")
    if steps == ((0, False),):
        return pixels
    n, h, w = pixels.shape[:3]
    if h != w:
        raise ToptuneError(f"Views need a square input crop (got {h}x{w}).")
    out = np.empty((n, len(steps)) + pixels.shape[1:], dtype=pixels.dtype)
    for v, (turns, mirror) in enumerate(steps):
        view = np.rot90(pixels, turns, axes=(1, 2)) if turns else pixels
        out[:, v] = view[:, :, ::-1] if mirror else view
    return out.reshape((n * len(steps),) + pixels.shape[1:])


def as_views(features: np.ndarray) -> np.ndarray:
    """Features as ``(n, n_views, dim)``: a 2-D ``(n, dim)`` array is one view per photo."""
    features = np.asarray(features)
    return features[:, None, :] if features.ndim == 2 else features


def flatten(features: np.ndarray, y: Optional[np.ndarray] = None, groups: Optional[Sequence] = None
            ) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Training rows from photos: (every view as a row, each row's label, each row's group).

    The group of a row is its photo's group (``groups``; None: each photo its own group), so cross-validation
    and leave-one-out keep a photo's views together."""
    F = as_views(features)
    n, v, d = F.shape
    base = np.arange(n) if groups is None else _group_ids(groups)
    rows_y = None if y is None else np.repeat(np.asarray(y), v)
    return F.reshape(n * v, d), rows_y, np.repeat(base, v)


def _group_ids(groups: Sequence) -> np.ndarray:
    """Group labels as integers; a photo labelled -1 (no group) is a group of its own."""
    g = np.asarray(groups)
    ids = np.unique(g, return_inverse=True)[1].astype(np.int64)
    alone = g == -1 if np.issubdtype(g.dtype, np.number) else np.zeros(len(g), dtype=bool)
    ids[alone] = ids.max(initial=0) + 1 + np.arange(int(alone.sum()))
    return ids


def average(row_proba: np.ndarray, views: int) -> np.ndarray:
    """(n * views, n_classes) probabilities of every view -> (n, n_classes), the mean over each photo's views."""
    p = np.asarray(row_proba)
    return p.reshape(-1, views, p.shape[-1]).mean(axis=1)


def photo_embedding(features: np.ndarray) -> np.ndarray:
    """One unit vector per photo: the mean of its L2-normalised views, normalised again, (n, dim) float32."""
    F = as_views(np.asarray(features, dtype=np.float32))
    F = F / np.maximum(np.linalg.norm(F, axis=2, keepdims=True), 1e-12)
    mean = F.mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)
