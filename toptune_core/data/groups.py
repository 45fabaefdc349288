"""Session groups: photos that are likely of one plant or one photo session, kept together by every estimate.

Near-duplicates (``data.duplicates``, cosine >= 0.90) catch copies and re-shots of one leaf. Photos taken one
after another in a field share more than that: the same hand holding leaves the same way, the same soil and
light. A random split puts such photos on both sides and rewards a model that memorises the session. iBean's
official test photos were taken apart from its training photos: on them the default top-tuned model of the
random-split era was 4.7 points below the fine-tune, while the random split showed them level.

**The rule**: average-linkage agglomerative clustering of the photos on the cosine distance of the reference
backbone's features (``data.duplicates.REFERENCE_BACKBONE``, the photo as it is), cut at cosine similarity
``SESSION_SIMILARITY``; groups that share a near-duplicate pair are merged, so a session group always contains
the near-duplicate group. Average linkage, not single: a chain of pairwise-similar leaves does not merge into
one giant group.

Why 0.80 (measured on the full iBean set, 1167 photos, tf_efficientnet_lite0 features at 224 px, and looked at
side by side: six random pairs of each band, README "An estimate for new photos"):
- pairs at 0.85-0.90 (2165 pairs): 95 % of the same class; looked at, leaves held the same way against the same
  soil or crop background, with the same light: one session, mostly different leaves;
- pairs at 0.80-0.85 (10511): 84 % of the same class; still the same framing and background style;
- pairs at 0.75-0.80 (29075): 68 % of the same class, mixed framings: no longer recognisably one session.
At 0.80 average linkage gives 619 groups; 731 of the 1167 photos share a group with another, the largest group
has 57 photos (complete linkage gave at most 11 and broke sessions apart; 0.75 made a group of 159). The rule is
deliberately on the pessimistic side: it may also join look-alike photos of different sessions, which makes the
estimate a little harsher, never more flattering.
"""

from __future__ import annotations

import numpy as np

from toptune_core.data.duplicates import duplicate_groups

SESSION_SIMILARITY = 0.80
_MAX_EXACT = 6000  # photos clustered exactly (memory: n^2 / 2 distances); larger sets are grouped in blocks


def session_groups(features: np.ndarray, similarity: float = SESSION_SIMILARITY) -> np.ndarray:
    """A group label per photo (0..k-1): likely the same plant or session (module docstring). ``features``:
    (n, dim) or (n, n_views, dim) reference features; the photo as it is (the first view) decides. A photo with
    no features (NaN, unreadable) is a group of its own."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    X = np.asarray(features, dtype=np.float64)
    X = X[:, 0] if X.ndim == 3 else X
    n = len(X)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    valid = np.isfinite(X).all(axis=1)
    clusters = np.arange(n) + n  # photos without features: alone
    index = np.flatnonzero(valid)
    for start in range(0, len(index), _MAX_EXACT):  # sorted blocks: sessions rarely span a block boundary
        block = index[start:start + _MAX_EXACT]
        if len(block) == 1:
            clusters[block] = block
            continue
        U = X[block] / np.maximum(np.linalg.norm(X[block], axis=1, keepdims=True), 1e-12)
        cos = np.clip(1.0 - U @ U.T, 0.0, 2.0)
        condensed = cos[np.triu_indices(len(block), 1)]
        labels = fcluster(linkage(condensed, "average"), 1.0 - similarity, "distance")
        clusters[block] = labels + start * 2 + 2 * n  # distinct per block
    near = duplicate_groups(np.where(valid[:, None], X, np.nan))
    # one graph: photo -- its cluster, photo -- its near-duplicate group; its components are the session groups
    rows = np.concatenate([np.arange(n), np.arange(n)])
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    _, near_ids = np.unique(near, return_inverse=True)
    cols = np.concatenate([n + cluster_ids, n + cluster_ids.max() + 1 + near_ids])
    size = n + cluster_ids.max() + 2 + near_ids.max()
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    labels = connected_components(graph, directed=False)[1][:n]
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)
