"""Top classifiers trained on frozen backbone features: ``make_classifier`` builds any of the choices in the table
(``methods.choices``: logistic regression, the default; kernel ridge; Random Forest) or the automatic choice among
them (``methods.auto``); ``fit_classifier`` fits one with progress. scikit-learn is imported on first use, so the
table of choices costs nothing to import.
"""

from __future__ import annotations

from toptune_core.methods.choices import (CLASSIFIERS, DEFAULT_CLASSIFIER, ClassifierSpec, fit_classifier,
                                          make_candidate)

__all__ = ["CLASSIFIERS", "DEFAULT_CLASSIFIER", "ClassifierSpec", "chosen_settings", "fit_classifier",
           "make_classifier"]


def make_classifier(kind: str = DEFAULT_CLASSIFIER, *, random_state: int = 0):
    """A fresh, unfitted top classifier of ``kind`` (a key of ``CLASSIFIERS``), a scikit-learn estimator."""
    if kind == "auto":
        from toptune_core.methods.auto import AutoClassifier

        return AutoClassifier(random_state=random_state)
    return make_candidate(kind, random_state=random_state)


def chosen_settings(clf) -> dict:
    """What a fitted classifier chose by cross-validation (kernel: width, penalty; auto: the CV table); else {}."""
    describe = getattr(clf, "describe", None)
    return describe() if callable(describe) else {}
