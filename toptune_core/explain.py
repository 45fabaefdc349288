"""Where on the leaf: the exact class activation map of a linear top classifier.

The logistic regression (the default top classifier) sees a view's pooled
features ``f`` (the mean of the backbone's map ``A`` over its cells, ``features.featuremap``)
L2-normalised: a class's logit is ``s_c = b_c + w_c . f / |f|``. Since ``f`` is
the mean of the cells, the logit splits exactly over the cells:

    M_c(cell) = w_c . A[:, cell] / |f|,   mean over cells of M_c = s_c - b_c.

That is the map of one view (CAM, Zhou et al. 2016, for a head on
L2-normalised features; no gradients). Each view's map is turned back to the
photo's orientation (``to_photo_orientation``: the views are quarter turns then
a mirror, ``features.views.VIEW_SETS``) and the views are averaged, so the
photo's map decomposes the mean of the views' logits (not the mean of their
probabilities, which no sum over cells can split exactly).

What is shown is the **class-versus-others** map: ``M_c - sum_{k != c} q_k M_k``
with ``q`` the other classes' probabilities in that view scaled to sum to 1
(``rivals``): the evidence for this class rather than for its rivals, weighed as
the model weighs them (the part every class shares, "this is a leaf", cancels);
its mean over cells is ``s_c - sum q_k s_k`` minus the same of the intercepts. Cells are 32 px of the 288 px
centre crop for tf_efficientnet_lite0 (9 x 9); values are logit units per cell,
shown on one fixed scale (``COLOUR_SCALE``), never stretched per photo.

Only linear heads decompose exactly. The kernel ridge (an RBF kernel on the
pooled features) and the Random Forest (thresholds on single features) have
no such split: ``linear_head`` returns None for them and no map is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from toptune_core.features.views import VIEW_SETS

#: The colour scale of every map (logit units per cell): -COLOUR_SCALE (against the class) .. +COLOUR_SCALE (for it).
#: Fixed for all photos and runs (L2-normalised features, one penalty), so a healthy leaf is not painted hot.
COLOUR_SCALE = 10.0
NO_MAP = ("no exact map exists for this classifier: only a linear head (logistic regression) splits its score "
          "over the cells of the backbone's map")


@dataclass(frozen=True)
class LinearHead:
    """A linear top classifier as the ONNX graph computes it: scores = W . (f / |f|) + b, one row per class of
    the run (rows of classes the classifier never saw are zero and marked in ``known``)."""

    weights: np.ndarray  # (n_classes, dim) float64
    intercepts: np.ndarray  # (n_classes,)
    known: np.ndarray  # (n_classes,) bool
    normalise: bool  # L2 normalisation of the features first
    post_transform: str  # "SOFTMAX" or "LOGISTIC" (two classes: rows -w, +w)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) pooled features -> (n, n_classes) logits."""
        f = np.asarray(features, dtype=np.float64)
        if self.normalise:
            f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
        return f @ self.weights.T + self.intercepts

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """The classifier's probabilities from its logits (as ONNX's LinearClassifier post transform)."""
        s = np.where(self.known, scores, -np.inf)
        if self.post_transform == "LOGISTIC":
            p = np.where(self.known, 1.0 / (1.0 + np.exp(-scores)), 0.0)
        else:
            p = np.exp(s - s.max(axis=-1, keepdims=True))
        return p / p.sum(axis=-1, keepdims=True)

    def as_dict(self) -> dict:
        return {"weights": self.weights.astype(np.float32).tolist(), "intercepts": self.intercepts.tolist(),
                "known": self.known.tolist(), "normalise": self.normalise, "post_transform": self.post_transform}


def linear_head(onnx_bytes: bytes, class_index: Sequence[int], n_classes: int) -> Optional[LinearHead]:
    """The linear head of a top classifier's ONNX graph (``portable.top.classifier_to_onnx``): [L2 Normalizer ->]
    LinearClassifier; None for any other classifier (kernel ridge, Random Forest)."""
    import onnx
    from onnx import helper

    graph = onnx.load_from_string(onnx_bytes).graph
    ops = [n.op_type for n in graph.node]
    linear = [n for n in graph.node if n.op_type == "LinearClassifier"]
    if len(linear) != 1 or any(op not in ("Normalizer", "LinearClassifier", "Cast", "Identity") for op in ops):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in linear[0].attribute}
    post = attrs.get("post_transform", b"NONE").decode()
    labels = list(attrs.get("classlabels_ints", []))
    feeding = [n for n in graph.node if n.op_type == "Normalizer" and linear[0].input[0] in n.output]
    if post not in ("SOFTMAX", "LOGISTIC") or not labels:
        return None
    normalise = bool(feeding)  # (a Normalizer after the classifier only rescales its probabilities: L1)
    if normalise and helper.get_attribute_value(feeding[0].attribute[0]) != b"L2":
        return None
    coef = np.asarray(attrs["coefficients"], dtype=np.float64).reshape(len(labels), -1)
    b = np.asarray(attrs.get("intercepts", [0.0] * len(labels)), dtype=np.float64)
    weights, intercepts = np.zeros((n_classes, coef.shape[1])), np.zeros(n_classes)
    known = np.zeros(n_classes, dtype=bool)
    index = np.asarray(labels, dtype=int)  # the classifier's labels are the run's class indices (``class_index``)
    if sorted(index.tolist()) != sorted(int(c) for c in class_index) or index.max() >= n_classes:
        return None
    weights[index], intercepts[index], known[index] = coef, b, True
    return LinearHead(weights, intercepts, known, normalise, post)


def view_class_maps(head: LinearHead, feature_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One view's (dim, rows, cols) map -> (its per-class cell contributions (n_classes, rows, cols), its logits).

    The mean over cells of class c's map equals its logit minus its intercept (exactly, up to float rounding)."""
    A = np.asarray(feature_map, dtype=np.float64)
    f = A.mean(axis=(1, 2))
    scale = 1.0 / max(float(np.linalg.norm(f)), 1e-12) if head.normalise else 1.0
    maps = np.einsum("cd,dhw->chw", head.weights, A) * scale
    return maps, head.scores(f[None])[0]


def rivals(p: np.ndarray) -> np.ndarray:
    """(n_classes, n_classes): row c = the weights of class c's rivals, the other classes' probabilities scaled to sum
    to 1 (equal weights where the others have none); the diagonal is 0."""
    n = len(p)
    others = np.where(np.eye(n, dtype=bool), 0.0, np.broadcast_to(p, (n, n)))
    total = others.sum(axis=1, keepdims=True)
    equal = (1.0 - np.eye(n)) / max(n - 1, 1)
    return np.where(total > 1e-12, others / np.maximum(total, 1e-300), equal)


def to_photo_orientation(view_map: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """A view's (..., rows, cols) map turned back to the photo: the view is ``mirror(rot90(photo, turns))``."""
    m = view_map[..., ::-1] if mirror else view_map
    return np.rot90(m, -turns, axes=(-2, -1)) if turns else m


def photo_maps(head: LinearHead, maps: np.ndarray, views: str) -> dict[str, np.ndarray]:
    """Every view's map (n_views, dim, rows, cols) of one photo -> in the photo's orientation, averaged over views:
    ``class`` (n_classes, rows, cols) the cell contributions to each logit, ``contrast`` the class-versus-others
    maps, ``logits`` (n_views, n_classes) and ``probabilities`` (n_views, n_classes) of each view."""
    steps = VIEW_SETS[views]
    if len(steps) != len(maps):
        raise ValueError(f"{len(maps)} view maps for the view set '{views}' of {len(steps)}")
    class_maps, contrast, logits, proba = [], [], [], []
    for (turns, mirror), A in zip(steps, maps):
        M, s = view_class_maps(head, A)
        p = head.probabilities(s[None])[0]
        D = M - np.tensordot(rivals(p), M, axes=1)
        class_maps.append(to_photo_orientation(M, turns, mirror))
        contrast.append(to_photo_orientation(D, turns, mirror))
        logits.append(s)
        proba.append(p)
    return {"class": np.mean(class_maps, axis=0), "contrast": np.mean(contrast, axis=0),
            "logits": np.asarray(logits), "probabilities": np.asarray(proba)}


def heatmaps(head: LinearHead, maps: np.ndarray, views: str, classes: Sequence[str]) -> dict[str, list]:
    """``predict --json --heatmaps``: for every class the classifier knows, its class-versus-others map as a 2-D list
    (rows x columns over the centre crop, photo orientation, logit units)."""
    contrast = photo_maps(head, maps, views)["contrast"]
    return {c: np.round(contrast[i], 5).tolist() for i, c in enumerate(classes) if head.known[i]}


def upsample(cell_map: np.ndarray, size: int) -> np.ndarray:
    """A (rows, cols) map as (size, size) by centred bilinear interpolation (each cell's value at its centre)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(cell_map, dtype=np.float32), mode="F")
                      .resize((size, size), Image.BILINEAR), dtype=np.float32)


def overlay(crop: np.ndarray, cell_map: np.ndarray, *, scale: float = COLOUR_SCALE, alpha: float = 0.55) -> np.ndarray:
    """The (S, S, 3) uint8 crop with the map over it on the fixed diverging scale: red for the class, blue against,
    clear where the map is near 0. Values beyond ``scale`` saturate."""
    v = np.clip(upsample(cell_map, crop.shape[0]) / scale, -1.0, 1.0)[..., None]
    red, blue = np.array([215, 25, 28], np.float32), np.array([44, 123, 182], np.float32)
    colour = np.where(v >= 0, red, blue)
    a = alpha * np.abs(v)
    return np.clip(crop.astype(np.float32) * (1 - a) + colour * a, 0, 255).astype(np.uint8)
