"""The top classifier as ONNX, and a top-tuned run that predicts through ONNX Runtime alone.

Every top-tuning run writes, beside its scikit-learn model (``model.joblib``),
``classifier.onnx`` (the same classifier converted by ``skl2onnx``: features in,
class probabilities out, within 1e-6 of scikit-learn's) and ``toptune.json``
(class names, the classifier's own classes, backbone, preprocessing). The store
checksums both. ``PortableTopTuner.from_run`` reads them, and with the
backbone's exported graph (``features.graph``) predicts a photo with ONNX
Runtime, NumPy and Pillow only: a new ``predict`` process imports neither
torch nor scikit-learn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toptune_core.features.views import as_views, average
from toptune_core.methods.photos import Photos

CLASSIFIER_FILE = "classifier.onnx"
META_FILE = "toptune.json"
FORMAT = 1


def classifier_to_onnx(clf, n_features: int) -> bytes:
    """A fitted top classifier (Random Forest, scaler + logistic regression, the kernel, or the automatic
    choice's pick) as ONNX bytes: input ``features`` (n, n_features) float32, outputs ``label`` and
    ``probabilities`` (no ZipMap)."""
    clf = getattr(clf, "best_estimator_", clf)  # the automatic choice: the classifier it chose and refitted
    if hasattr(clf, "to_onnx"):  # the kernel writes its own small graph (skl2onnx does not know it)
        return clf.to_onnx(n_features)
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    final = clf.steps[-1][1] if hasattr(clf, "steps") else clf
    model = to_onnx(clf, initial_types=[("features", FloatTensorType([None, n_features]))],
                    options={id(final): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return model.SerializeToString()


def write_portable_files(folder: Path, clf, classes: Sequence[str], backbone: str, data_config: dict,
                         classifier: str, views: str) -> list[str]:
    """``classifier.onnx`` and ``toptune.json`` of a fitted top classifier in ``folder``; the names written
    (none when the classifier cannot be converted: prediction then uses ``model.joblib``)."""
    try:
        onnx_bytes = classifier_to_onnx(clf, int(clf.n_features_in_))
    except Exception:  # an estimator skl2onnx cannot express: the joblib model still serves
        return []
    (Path(folder) / CLASSIFIER_FILE).write_bytes(onnx_bytes)
    meta = {"format": FORMAT, "classes": list(classes), "class_index": [int(c) for c in clf.classes_],
            "backbone": backbone, "data_config": data_config, "classifier": classifier, "views": views,
            "n_features": int(clf.n_features_in_)}
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=1))
    return [CLASSIFIER_FILE, META_FILE]


class OnnxClassifier:
    """``classifier.onnx`` run by ONNX Runtime: features -> probabilities over all the run's classes."""

    def __init__(self, onnx: "bytes | Path", class_index: Sequence[int], n_classes: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx if isinstance(onnx, bytes) else str(onnx), options,
                                            providers=["CPUExecutionProvider"])
        self.class_index, self.n_classes = np.asarray(class_index, dtype=int), n_classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        proba = self.session.run(["probabilities"], {"features": np.asarray(X, dtype=np.float32)})[0]
        out = np.zeros((len(X), self.n_classes), dtype=np.float64)
        out[:, self.class_index] = proba
        return out


class PortableTopTuner:
    """A completed top-tuning run predicting through ONNX Runtime (backbone graph + ``classifier.onnx``).

    The same interface as ``TopTuner`` for prediction (``classes_``, ``embed``,
    ``predict_proba``); ``extractor`` is a ``FeatureExtractor`` for the run's
    backbone, whose engine runs the backbone (ONNX Runtime on a CPU).
    """

    method = "toptune"

    def __init__(self, meta: dict, classifier: OnnxClassifier, extractor):
        self.meta, self.classifier_, self.extractor = meta, classifier, extractor
        self.backbone = meta["backbone"]
        self.classes_ = list(meta["classes"])

    @classmethod
    def from_run(cls, store, run, *, extractor=None, settings=None) -> Optional["PortableTopTuner"]:
        """The run's portable model, or None when the run has none (older runs) or ONNX Runtime is missing."""
        from toptune_core.features import engines

        folder = store.run_dir(run.id)
        if not ((folder / CLASSIFIER_FILE).exists() and (folder / META_FILE).exists()
                and engines.installed("onnxruntime")):
            return None
        meta = json.loads(store.model_file(run.id, META_FILE).read_text())
        if meta.get("format") != FORMAT:
            return None
        from toptune_core.features.extractor import extractor_for

        extractor = extractor_for(meta["backbone"], meta["data_config"], meta.get("views", "1"), extractor, settings)
        clf = OnnxClassifier(store.model_file(run.id, CLASSIFIER_FILE), meta["class_index"], len(meta["classes"]))
        return cls(meta, clf, extractor)

    def embed(self, photos: Photos, **_) -> np.ndarray:
        """The frozen backbone's features of every view, (n, n_views, dim) (those ``photos`` carries, else
        extracted by the engine)."""
        if photos.features is not None:
            return photos.features
        return self.extractor.features_of_photos(photos.paths)

    def predict_proba(self, photos: Photos, **_) -> np.ndarray:
        """Class probabilities, averaged over each photo's views (``features.views``)."""
        X = as_views(self.embed(photos))
        n, v, d = X.shape
        return average(self.classifier_.predict_proba(X.reshape(n * v, d)), v)
