"""Metrics on held-out photos: accuracy, balanced accuracy, macro F1, per class, confusion, per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, \
    precision_recall_fscore_support


@dataclass
class Evaluation:
    metrics: dict  # accuracy, balanced_accuracy, macro_f1, per_class, confusion_matrix, classes, n_test
    predictions: pd.DataFrame  # path, true, predicted, confidence, correct, p_<class>...


def evaluate(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], paths: Sequence[str]) -> Evaluation:
    """Score class probabilities ``proba`` (n, n_classes) of held-out photos against their labels."""
    y_true = np.asarray(y_true)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n_test": int(len(y_true)),
        "classes": list(classes),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
    }
    frame = pd.DataFrame({
        "path": list(paths),
        "true": [classes[i] for i in y_true],
        "predicted": [classes[i] for i in y_pred],
        "confidence": proba.max(axis=1),
        "correct": y_true == y_pred,
    })
    for i, c in enumerate(classes):
        frame[f"p_{c}"] = proba[:, i]
    return Evaluation(metrics, frame)


def full_proba(clf, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` laid out over all classes, also when a class was missing from training."""
    proba = clf.predict_proba(X)
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, np.asarray(clf.classes_, dtype=int)] = proba
    return out
