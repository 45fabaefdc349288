"""Near-duplicate photos: pairs, groups, and the leakage report across a train/test split.

Leaf datasets hold several shots of one leaf, or of look-alike leaves framed
the same way. When one is held out and its near-twin trains, the held-out
score flatters the model. Two photos are **near-duplicates** when the cosine
similarity of their ``REFERENCE_BACKBONE`` features is at least
``DUPLICATE_THRESHOLD``. One backbone for every run and method, so every
method and backbone sees the same groups and the same grouped split.

Why 0.90 (measured on tf_efficientnet_lite0 features; lite0's pooled features
move a lot with framing, so the line between "same shot" and "look-alike" is
narrow):
- the same photo edited slightly (30 demo photos, each re-encoded at JPEG
  quality 85): re-encoding alone scores 0.946-0.993 against the original;
  cropping 1 % off each side 0.926-0.983; a 3 % shift 0.919-0.979; a 2-degree
  rotation 0.887-0.969 (median 0.934); a 3 % crop 0.852-0.976 (median 0.932);
  a re-framing by 5-10 % with up to 5 degrees of rotation (60 photos of the
  full set) a median 0.896;
- distinct photos (the full iBean set, 1167 photos, 680,000 pairs): 98 pairs
  (0.014 %) reach 0.90, none across classes; at 0.88 there are 438, 10 across
  classes (which cannot be one leaf); at 0.85 2263 and 112. The highest pair
  scores 0.935;
- looked at side by side, the pairs above 0.90 are a re-shot of one bean-rust
  leaf (same spot pattern, closer framing) and healthy leaves held the same
  way against the same soil: for a held-out score, a near-twin either way.
So 0.90 catches re-encoded, slightly cropped or shifted copies and most
slightly rotated ones, without flagging pairs that are certainly different
leaves; lower thresholds start to. It misses about half of the re-shots that
are re-framed by 5 % or more.

Groups are the connected components of the near-duplicate graph: photos
linked by a chain of near-duplicates are kept together (``data.split``'s
grouped split, and the folds of the cross-validation inside a fit).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

REFERENCE_BACKBONE = "tf_efficientnet_lite0"
DUPLICATE_THRESHOLD = 0.90
_BLOCK = 2048  # rows of the similarity matrix computed at once (memory: _BLOCK x n floats)


def _unit(features: np.ndarray) -> np.ndarray:
    """Unit rows of the photos' features; of (n, n_views, dim) features the first view, the photo as it is (the
    rule's threshold was measured on those)."""
    X = np.asarray(features, dtype=np.float32)
    if X.ndim == 3:
        X = X[:, 0]
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        X = X / norms
    return np.nan_to_num(X, nan=0.0)  # a photo without features (unreadable) is nobody's duplicate


def near_duplicate_pairs(features: np.ndarray, threshold: float = DUPLICATE_THRESHOLD
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, similarity)`` of every pair ``i < j`` with cosine similarity >= ``threshold``."""
    X = _unit(features)
    rows, cols, sims = [], [], []
    for start in range(0, len(X), _BLOCK):
        S = X[start:start + _BLOCK] @ X.T
        i, j = np.nonzero(S >= threshold)
        i = i + start
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
        sims.append(S[i[keep] - start, j[keep]])
    if not rows:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)


def duplicate_groups(features: np.ndarray, threshold: float = DUPLICATE_THRESHOLD) -> np.ndarray:
    """A group label per photo: the connected components of the near-duplicate graph (singletons alone)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(features)
    i, j, _ = near_duplicate_pairs(features, threshold)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def leakage_report(features: np.ndarray, train_idx: Sequence[int], test_idx: Sequence[int],
                   names: Sequence[str], *, correct: Optional[Sequence[bool]] = None,
                   threshold: float = DUPLICATE_THRESHOLD, examples: int = 12) -> dict:
    """Near-duplicate pairs across a split (JSON-ready).

    ``features`` and ``names`` cover every photo the split indexes; ``correct``
    (aligned with ``test_idx``) adds the held-out accuracy of the test photos
    with and without a near-twin among the training photos.
    """
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    i, j, sims = near_duplicate_pairs(features, threshold)
    total = len(i)
    side = np.full(len(features), -1)
    side[train_idx], side[test_idx] = 0, 1
    across = side[i] + side[j] == 1  # one in training, one held out
    i, j, sims = i[across], j[across], sims[across]
    test_of = np.where(side[i] == 1, i, j)
    train_of = np.where(side[i] == 1, j, i)
    order = np.argsort(-sims)
    report = {"backbone": REFERENCE_BACKBONE, "threshold": threshold,
              "rule": f"cosine similarity of {REFERENCE_BACKBONE} features >= {threshold:.2f}",
              "pairs": int(total), "pairs_across": int(len(sims)),
              "test_photos_with_twin": int(len(np.unique(test_of))), "n_test": int(len(test_idx)),
              "examples": [{"test": str(names[test_of[k]]), "train": str(names[train_of[k]]),
                            "similarity": round(float(sims[k]), 4)} for k in order[:examples]]}
    if correct is not None:
        correct = np.asarray(correct, dtype=bool)
        twin = np.isin(test_idx, test_of)
        report["accuracy_with_twin"] = float(correct[twin].mean()) if twin.any() else None
        report["accuracy_without_twin"] = float(correct[~twin].mean()) if (~twin).any() else None
    return report


def describe_leakage(report: dict) -> str:
    """One plain-words line about a leakage report."""
    if not report:
        return "Near-duplicates were not checked."
    line = (f"{report['test_photos_with_twin']} of the {report['n_test']} held-out photos have a near-duplicate "
            f"among the training photos ({report['pairs_across']} pair(s) across the split; "
            f"{report['rule']})")
    acc_twin, acc_alone = report.get("accuracy_with_twin"), report.get("accuracy_without_twin")
    if acc_twin is not None and acc_alone is not None:
        line += f"; held-out accuracy {acc_twin:.3f} on those, {acc_alone:.3f} on the others"
    return line + "."
