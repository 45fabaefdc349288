"""The kernel classifier: Nyström kernel ridge regression, as in Falkon (Alfano et al.'s top-tuning method).

``NystroemKernelClassifier`` is ridge regression on one-hot targets in the
feature space of an RBF kernel on L2-normalised backbone features, the kernel
approximated by ``n_components`` Nyström centres (training photos drawn with
``random_state``; all of them when there are fewer). That is Falkon's model
(Rudi et al. 2017) solved directly on CPU instead of with Falkon's
preconditioned conjugate gradient: with about a thousand centres the direct
solve takes well under a second.

Kernel width (``gamma``) and penalty (``alpha``) are chosen by cross-validation
on the training photos only. For ridge regression leaving photos out has a
closed form, so every (gamma, alpha) of the grid is scored by leave-one-out on
one eigendecomposition per gamma; photos given the same ``groups`` label
(near-duplicates, ``data.duplicates``) are left out together, so a photo's
near-twin never votes for it. Class probabilities are a softmax of the ridge
scores with a temperature fitted on the same left-out scores (minimum log
loss), so they sum to one and are calibrated on photos the model had not seen.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.system import one_blas_thread

# RBF exp(-gamma |x - x'|^2) on unit vectors, where |x - x'|^2 = 2 - 2 cos (median about 0.8 for lite0 features).
# On the iBean sets cross-validation chose gamma 0.25 to 2 and never 4 or 8 of a first grid (0.25 ... 8), and the
# smallest penalty often: the grids reach one step beyond what was chosen on both sides.
GAMMAS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
ALPHAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _rbf(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * np.maximum(2.0 - 2.0 * (A @ B.T), 0.0))


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Spectrum:
    """One gamma's Nyström feature map and the eigendecomposition of its ridge problem.

    ``Z = K(X, C) Q diag(lam)^-1/2`` maps photos to ``r`` features (``proj`` is the right-hand factor);
    from ``Z = U V^T``-style factors the fitted scores and their left-out versions follow for any alpha.
    ``cos_cc`` and ``cos_xc`` are the cosine similarities among the centres and of the photos to them
    (None when the centres are the photos themselves).
    """

    def __init__(self, cos_cc: np.ndarray, cos_xc: Optional[np.ndarray], gamma: float):
        lam, Q = np.linalg.eigh(np.exp(-gamma * np.maximum(2.0 - 2.0 * cos_cc, 0.0)))
        keep = lam > lam.max() * 1e-10
        lam, Q = lam[keep], Q[:, keep]
        self.proj = Q / np.sqrt(lam)  # (m, r)
        if cos_xc is None:  # Z = K Q lam^-1/2 = Q lam^1/2, and Z^T Z = diag(lam): no second decomposition
            self.s, self.V, self.U = lam, None, Q * np.sqrt(lam)
        else:
            Z = np.exp(-gamma * np.maximum(2.0 - 2.0 * cos_xc, 0.0)) @ self.proj
            self.s, self.V = np.linalg.eigh(Z.T @ Z)
            self.U = Z @ self.V

    def coef(self, Y: np.ndarray, alpha: float) -> np.ndarray:
        """Ridge weights on the Nyström features, (r, n_classes)."""
        w = (self.U.T @ Y) / (self.s + alpha)[:, None]
        return w if self.V is None else self.V @ w

    def left_out_scores(self, Y: np.ndarray, alpha: float, groups: list[np.ndarray]) -> np.ndarray:
        """Scores of every photo by the model fitted without its group (closed form for ridge)."""
        w = 1.0 / (self.s + alpha)
        fitted = self.U @ (w[:, None] * (self.U.T @ Y))  # U^T Y is (r, n_classes): cheap to redo per alpha
        hat = (self.U ** 2) @ w
        out = Y - (Y - fitted) / np.maximum(1.0 - hat, 1e-12)[:, None]
        for idx in groups:  # near-duplicates: (I - H_BB)^-1 (Y_B - fitted_B)
            H = (self.U[idx] * w) @ self.U[idx].T
            out[idx] = Y[idx] - np.linalg.solve(np.eye(len(idx)) - H, Y[idx] - fitted[idx])
        return out


def _fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature with the lowest log loss of left-out scores."""
    from scipy.optimize import minimize_scalar

    def loss(log_t: float) -> float:
        p = _softmax(scores, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))))

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(1e-3), np.log(10.0)), method="bounded").x))


def _multi_groups(groups: Optional[Sequence]) -> list[np.ndarray]:
    """Index arrays of the groups with more than one photo."""
    if groups is None:
        return []
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    return [np.asarray(m) for m in members.values() if len(m) > 1]


class NystroemKernelClassifier(ClassifierMixin, BaseEstimator):
    """Nyström kernel ridge regression (RBF on L2-normalised features), width and penalty chosen by CV.

    Fitted: ``centres_`` and ``weights_`` (scores = K(x, centres) @ weights), ``gamma_``, ``alpha_``,
    ``temperature_``, ``cv_accuracy_`` (left-out accuracy of the chosen pair), ``cv_results_`` (every pair),
    ``n_centres_``.
    """

    _fits_with_progress = True  # ``fit`` takes ``groups``, ``progress`` and ``should_cancel``

    def __init__(self, n_components: int = 1000, gammas: Sequence[float] = GAMMAS,
                 alphas: Sequence[float] = ALPHAS, random_state: int = 0):
        self.n_components = n_components
        self.gammas = gammas
        self.alphas = alphas
        self.random_state = random_state

    def fit(self, X, y, groups: Optional[Sequence] = None, *, progress: Optional[ProgressCallback] = None,
            should_cancel: Optional[CancelCheck] = None) -> "NystroemKernelClassifier":
        X = _unit(X)
        self.n_features_in_ = X.shape[1]
        self.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
        Y = np.eye(len(self.classes_))[y_idx]
        n = len(X)
        rng = np.random.default_rng(self.random_state)
        take = np.arange(n) if n <= self.n_components else np.sort(rng.choice(n, self.n_components, replace=False))
        self.centres_, self.n_centres_ = X[take], len(take)
        meter = ProgressMeter("fit", len(self.gammas), progress, "kernel widths", should_cancel)
        meter.update(0, "choosing the kernel width and penalty by cross-validation")
        with one_blas_thread():
            cos_cc = self.centres_ @ self.centres_.T
            cos_xc = None if len(take) == n else X @ self.centres_.T
            (self.cv_accuracy_, _), self.gamma_, self.alpha_, spectrum, scores = self._search(
                cos_cc, cos_xc, Y, y_idx, _multi_groups(groups), meter)
            # Scores are K(x, centres) @ proj @ coef: one (centres, classes) matrix of weights is all prediction needs.
            self.weights_ = spectrum.proj @ spectrum.coef(Y, self.alpha_)
            self.temperature_ = _fit_temperature(scores, y_idx)
        return self

    def _search(self, cos_cc, cos_xc, Y, y_idx, multi, meter) -> tuple:
        """The (gamma, alpha) with the best left-out accuracy (ties: lowest squared error); fills ``cv_results_``."""
        best, self.cv_results_ = None, []
        for i, gamma in enumerate(self.gammas):
            spectrum = _Spectrum(cos_cc, cos_xc, gamma)
            for alpha in self.alphas:
                scores = spectrum.left_out_scores(Y, alpha, multi)
                accuracy = float(np.mean(scores.argmax(axis=1) == y_idx))
                mse = float(np.mean((scores - Y) ** 2))
                self.cv_results_.append({"gamma": float(gamma), "alpha": float(alpha), "cv_accuracy": accuracy})
                if best is None or (accuracy, -mse) > best[0]:
                    best = ((accuracy, -mse), gamma, alpha, spectrum, scores)
            meter.update(i + 1)
        return best

    def decision_function(self, X) -> np.ndarray:
        with one_blas_thread():
            return _rbf(_unit(X), self.centres_, self.gamma_) @ self.weights_

    def predict_proba(self, X) -> np.ndarray:
        return _softmax(self.decision_function(X), self.temperature_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]

    def to_onnx(self, n_features: int) -> bytes:
        """The fitted classifier as an ONNX graph (what ``portable.top`` writes as ``classifier.onnx``): input
        ``features`` (n, n_features) float32, outputs ``label`` (index into ``classes_``) and ``probabilities``.
        Computed in float64 inside, as here: the ridge weights can be large, float32 would lose digits."""
        from onnx import TensorProto, helper, numpy_helper

        consts = {"centres_t": self.centres_.T, "weights": self.weights_, "two": np.array(2.0), "zero": np.array(0.0),
                  "tiny": np.array(1e-12), "neg_gamma": np.array(-self.gamma_),
                  "inv_t": np.array(1.0 / self.temperature_)}
        node = helper.make_node
        nodes = [node("Cast", ["features"], ["x"], to=TensorProto.DOUBLE),
                 node("Mul", ["x", "x"], ["x2"]), node("ReduceSum", ["x2", "axis1"], ["n2"], keepdims=1),
                 node("Sqrt", ["n2"], ["n"]), node("Max", ["n", "tiny"], ["nn"]), node("Div", ["x", "nn"], ["u"]),
                 node("MatMul", ["u", "centres_t"], ["cos"]), node("Mul", ["two", "cos"], ["two_cos"]),
                 node("Sub", ["two", "two_cos"], ["sq0"]), node("Max", ["sq0", "zero"], ["sq"]),
                 node("Mul", ["sq", "neg_gamma"], ["e"]), node("Exp", ["e"], ["k"]),
                 node("MatMul", ["k", "weights"], ["scores"]), node("Mul", ["scores", "inv_t"], ["logits"]),
                 node("Softmax", ["logits"], ["p64"], axis=1),
                 node("Cast", ["p64"], ["probabilities"], to=TensorProto.FLOAT),
                 node("ArgMax", ["p64"], ["label"], axis=1, keepdims=0)]
        inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float64), k) for k, v in consts.items()]
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
        graph = helper.make_graph(
            nodes, "nystroem_kernel_ridge", [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                                           [None, n_features])],
            [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
             helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(self.classes_)])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    def describe(self) -> dict:
        """What cross-validation chose (JSON-ready)."""
        return {"gamma": float(self.gamma_), "alpha": float(self.alpha_), "temperature": round(self.temperature_, 4),
                "n_centres": int(self.n_centres_), "cv_accuracy": round(self.cv_accuracy_, 4),
                "cv": "leave-one-out (near-duplicate groups left out together) on the training photos"}
