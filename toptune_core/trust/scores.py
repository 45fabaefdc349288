"""Unfamiliarity scores tried against a disease the model never learned (higher = less like the training photos).

``ScoreBoard(data).compute(train, query, labels)`` fits every component on the
``train`` photos alone and scores the ``query`` photos:

* ``knn``: today's check, the distance to the k-th nearest training photo (Sun et al. 2022);
* ``maha_lw`` / ``maha_oas``: Mahalanobis to the nearest class mean with one shared covariance of the
  class-centred unit vectors, shrunk by Ledoit-Wolf / OAS (with fewer photos than dimensions the plain
  covariance is singular; Mahalanobis++, Mueller & Hein 2025, is the L2 normalisation our features already have);
  ``rmaha_lw``: its relative form (Ren et al. 2021: minus the same distance to one Gaussian of all photos);
* ``residual``: the part of (z - nearest class mean) outside the principal subspace holding 95 % of the
  class-centred variance (ViM's residual, Wang et al. 2022);
* ``margin``: minus the classifier's log-probability margin between its two most probable classes;
* ``class_knn``: the k-th nearest distance among training photos of the class the classifier predicts;
* ``patch`` / ``patch_leaf``: PatchCore-lite (``trust.patches``), all cells / green (leaf) cells only;
  ``patch_mid``: the same on a mid-level map (PatchCore's own choice of layer) with a 1 % coreset.

Fused variants (``VARIANTS``) combine components after standardising each by the median and interquartile
range of its out-of-fold scores on training photos (``standardise``). Every setting is fixed in advance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from toptune_core.features.views import flatten, photo_embedding
from toptune_core.trust.familiarity import _kth_distances
from toptune_core.trust.patches import PatchBank, PatchMaps, leaf_cells, top_mean

K = 10  # the k of today's check
RESIDUAL_VARIANCE = 0.95  # the principal subspace of ``residual`` holds 95 % of the class-centred variance
MID_STAGES = 5  # the mid-level map: lite0's first 5 stages (112 channels, stride 16: 18 x 18 cells at 288 px)
MID_CORESET_SHARE = 0.01  # its bank: a 1 % coreset (PatchCore's usual share; 4 times the cells of the head map)


@dataclass
class PhotoData:
    """Every photo's pooled features per view and (optionally) its maps, in one index space."""

    views: np.ndarray  # (n, n_views, dim)
    maps: Optional[PatchMaps] = None  # the map before pooling (``trust.patches``)
    mid_maps: Optional[PatchMaps] = None  # a mid-level map (``MapModel(stages=MID_STAGES)``)

    def __post_init__(self):
        self.emb = photo_embedding(self.views)


def standardise(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values - median) / interquartile range of ``reference`` (out-of-fold scores of training photos)."""
    q1, med, q3 = np.quantile(reference, [0.25, 0.5, 0.75])
    return (values - med) / max(q3 - q1, 1e-12)


def _z(name: str) -> Callable[[dict, dict], np.ndarray]:
    return lambda s, oof: standardise(s[name], oof[name])


#: Every variant tried: name -> (how it is made from the components, their out-of-fold scores).
VARIANTS: dict[str, tuple[str, Callable[[dict, dict], np.ndarray]]] = {
    "knn": ("k-NN distance, k=10, photo embedding (today's check)", lambda s, oof: s["knn"]),
    "maha_lw": ("Mahalanobis, shared class-centred covariance shrunk by Ledoit-Wolf", lambda s, oof: s["maha_lw"]),
    "maha_oas": ("Mahalanobis, shared class-centred covariance shrunk by OAS", lambda s, oof: s["maha_oas"]),
    "rmaha_lw": ("relative Mahalanobis (Ledoit-Wolf)", lambda s, oof: s["rmaha_lw"]),
    "residual": ("residual outside the 95 %-variance principal subspace", lambda s, oof: s["residual"]),
    "knn+margin": ("z(k-NN) + z(-classifier margin)", lambda s, oof: _z("knn")(s, oof) + _z("margin")(s, oof)),
    "class_knn": ("k-NN distance within the predicted class", lambda s, oof: s["class_knn"]),
    "patch": ("PatchCore-lite: mean of the 3 most unusual of 81 cells, 10 % coreset bank",
              lambda s, oof: s["patch"]),
    "patch_leaf": ("PatchCore-lite on green (leaf) cells only", lambda s, oof: s["patch_leaf"]),
    "max(knn,patch)": ("max of z(k-NN), z(patch)",
                       lambda s, oof: np.maximum(_z("knn")(s, oof), _z("patch")(s, oof))),
    "max(knn,patch_leaf)": ("max of z(k-NN), z(patch_leaf)",
                            lambda s, oof: np.maximum(_z("knn")(s, oof), _z("patch_leaf")(s, oof))),
    "patch_mid": ("PatchCore-lite on the mid-level map (stage 5 of 7, 3 x 3 neighbourhood mean, 324 cells), "
                  "1 % coreset", lambda s, oof: s["patch_mid"]),
    "max(knn,patch_mid)": ("max of z(k-NN), z(patch_mid)",
                           lambda s, oof: np.maximum(_z("knn")(s, oof), _z("patch_mid")(s, oof))),
}
PATCH_VARIANTS = {"patch", "patch_leaf", "max(knn,patch)", "max(knn,patch_leaf)"}
MID_VARIANTS = {"patch_mid", "max(knn,patch_mid)"}


def components_for(variants) -> set:
    """The ``ScoreBoard`` components the ``variants`` need (the classifier always: accuracy on accepted photos)."""
    from toptune_core.errors import ToptuneError

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ToptuneError(f"Unknown score '{unknown[0]}'. Choose from: {', '.join(VARIANTS)}.")
    need = {"knn", "margin"}
    for v in variants:
        need |= {"maha_lw"} if v in ("maha_lw", "maha_oas", "rmaha_lw", "residual") else set()
        need |= {"patch"} if v in PATCH_VARIANTS else {"patch_mid"} if v in MID_VARIANTS else set()
    return need


class ScoreBoard:
    """All component scores of query photos against one set of training photos."""

    def __init__(self, data: PhotoData, *, k: int = K, seed: int = 0, classifier: str = "logreg",
                 components: Optional[set] = None):
        self.data, self.k, self.seed, self.classifier = data, k, seed, classifier
        self.components = components  # None: every component the data allows; else only these (and ``knn``)
        self.seconds: dict[str, float] = {}  # time spent scoring queries, per component (fits excluded)
        self.n_scored = 0
        self.banks_: list[PatchBank] = []  # every patch bank built, in order (its cells' photos: ``cell_photo_``)

    def compute(self, train: np.ndarray, query: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Every component's score of the ``query`` photos, fitted on the ``train`` photos (``labels[train]``).
        Linear algebra on one BLAS thread (on a shared machine two threads wait for each other)."""
        from toptune_core.system import one_blas_thread

        with one_blas_thread():
            return self._compute(train, query, labels)

    def _compute(self, train: np.ndarray, query: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        train, query = np.asarray(train), np.asarray(query)
        if np.intersect1d(train, query).size:
            raise ValueError("a photo may not be scored against itself")
        y = np.asarray(labels)[train]
        Z, Q = self.data.emb[train], self.data.emb[query]
        k = max(1, min(self.k, int(np.unique(y, return_counts=True)[1].min())))
        out: dict[str, np.ndarray] = {}
        with self._timed("knn", len(query)):
            out["knn"] = _kth_distances(Q, Z, k)[0]
        if self._wants("maha_lw"):
            out.update(self._mahalanobis(Z, y, Q))
        if self._wants("margin"):
            pred, margin = self._classify(train, y, query)
            out["pred"], out["margin"] = pred, -margin
            with self._timed("class_knn", len(query)):
                out["class_knn"] = np.empty(len(query), dtype=np.float32)
                for c in np.unique(pred):
                    rows = pred == c
                    out["class_knn"][rows] = _kth_distances(Q[rows], Z[y == c], k)[0]
        if self.data.maps is not None and self._wants("patch"):
            out.update(self._patches(train, query))
        if self.data.mid_maps is not None and self._wants("patch_mid"):
            bank = PatchBank(share=MID_CORESET_SHARE, seed=self.seed).fit(self.data.mid_maps.subset(train), train)
            with self._timed("patch_mid", len(query)):
                out["patch_mid"] = bank.score(self.data.mid_maps.subset(query))
        self.n_scored += len(query)
        return out

    def _wants(self, component: str) -> bool:
        return self.components is None or component in self.components

    def _timed(self, name: str, n: int):
        board = self

        class Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                board.seconds[name] = board.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return Timer()

    def _mahalanobis(self, Z: np.ndarray, y: np.ndarray, Q: np.ndarray) -> dict[str, np.ndarray]:
        from sklearn.covariance import ledoit_wolf, oas

        classes = np.unique(y)
        means = np.stack([Z[y == c].mean(axis=0) for c in classes])
        R = (Z - means[np.searchsorted(classes, y)]).astype(np.float64)
        out, precision = {}, {}
        for name, shrink in (("maha_lw", ledoit_wolf), ("maha_oas", oas)):
            precision[name] = np.linalg.inv(shrink(R, assume_centered=True)[0])
            with self._timed(name, len(Q)):
                out[name] = _quadratic(Q, means, precision[name]).min(axis=1)
        background = np.linalg.inv(ledoit_wolf(Z.astype(np.float64))[0])
        with self._timed("rmaha_lw", len(Q)):
            relative = _quadratic(Q, means, precision["maha_lw"])
            relative -= _quadratic(Q, Z.mean(axis=0, keepdims=True), background)
            out["rmaha_lw"] = relative.min(axis=1)
        _, s, vt = np.linalg.svd(R, full_matrices=False)
        share = np.cumsum(s ** 2) / np.sum(s ** 2)
        V = vt[:int(np.searchsorted(share, RESIDUAL_VARIANCE)) + 1]
        with self._timed("residual", len(Q)):
            res = []
            for m in means:
                d = Q - m
                res.append(np.linalg.norm(d - (d @ V.T) @ V, axis=1))
            out["residual"] = np.min(res, axis=0)
        return out

    def _classify(self, train: np.ndarray, y: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, log-probability margin of the two most probable classes) of each query photo."""
        from toptune_core.features.views import average
        from toptune_core.methods.classifiers import make_classifier

        X, rows_y, _ = flatten(self.data.views[train], y)
        clf = make_classifier(self.classifier, random_state=self.seed)
        clf.fit(X, rows_y)
        t0 = time.perf_counter()
        Vq = self.data.views[query]
        proba = average(clf.predict_proba(Vq.reshape(-1, Vq.shape[-1])), Vq.shape[1])
        logp = np.log(np.clip(proba, 1e-12, None))
        top2 = -np.sort(-logp, axis=1)[:, :2]
        self.seconds["margin"] = self.seconds.get("margin", 0.0) + time.perf_counter() - t0
        return np.asarray(clf.classes_)[proba.argmax(axis=1)], top2[:, 0] - top2[:, 1]

    def _patches(self, train: np.ndarray, query: np.ndarray) -> dict[str, np.ndarray]:
        maps = self.data.maps
        bank = PatchBank(seed=self.seed).fit(maps.subset(train), train)
        self.banks_.append(bank)
        q = maps.subset(query)
        with self._timed("patch", len(query)):
            d = bank.cell_distances(q)
            out = {"patch": top_mean(d, None)}
        out["patch_leaf"] = top_mean(d, leaf_cells(q))
        return out


def _quadratic(Q: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(n_query, n_means): (q - m)^T P (q - m)."""
    out = np.empty((len(Q), len(means)))
    for j, m in enumerate(means):
        d = Q.astype(np.float64) - m
        out[:, j] = np.einsum("ij,ij->i", d @ precision, d)
    return out
