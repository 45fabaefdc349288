"""Top classifiers trained on frozen backbone features: the table of choices, building one of the single
classifiers, and fitting any with progress. ``methods.classifiers`` builds every choice (the automatic one too,
``methods.auto``, which reads this table and builds its candidates here).

- ``logreg`` (the default): logistic regression on L2-normalised features;
  with eight views of each photo at 288 px it matched the kernel on the
  estimate for new photos at a tenth of its fit time (README, the grid).
- ``kernel``: Nyström kernel ridge regression with an RBF kernel on
  L2-normalised features, the method of Alfano et al.'s "Fine-tuning or
  top-tuning?" (Falkon); width and penalty chosen by cross-validation on the
  training photos (``methods.kernel``).
- ``auto``: the estimate for new photos (``model_selection``) picks among
  logistic regression, the Random Forest and the kernel (``methods.auto``).
- ``rf``: a Random Forest with scikit-learn's default hyper-parameters, the Eden
  Library notebook's choice; its fit reports progress as trees are added.

Every fit and prediction runs its linear algebra on one BLAS thread
(``system.one_blas_thread``). scikit-learn is imported on first use, so the
table of choices costs nothing to import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from toptune_core.errors import ToptuneError
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.system import one_blas_thread


@dataclass(frozen=True)
class ClassifierSpec:
    key: str
    label: str
    settings: str


CLASSIFIERS = {
    "kernel": ClassifierSpec("kernel", "Kernel ridge (Nyström, as Falkon)",
                             "RBF kernel on L2-normalised features, Nyström approximation with up to 1000 centres "
                             "drawn from the training photos, ridge regression on one-hot targets; kernel width "
                             "gamma in {0.125, 0.25 ... 4} and penalty in {1e-5 ... 1} chosen by leave-one-out "
                             "cross-validation on the training photos (near-duplicates left out together); "
                             "probabilities: softmax of the scores with a temperature fitted on the left-out "
                             "scores; random_state = seed"),
    "auto": ClassifierSpec("auto", "Automatic choice",
                           "the estimate for new photos (stratified 5-fold cross-validation over the training photos "
                           "only, photos of one likely plant or session in one fold) scores logistic regression, "
                           "Random Forest and kernel ridge, cheapest first; a costlier one is chosen only when it is "
                           "better by more than the estimate's noise; the choice is refitted on all the training "
                           "photos; the held-out photos are used once, for the final score"),
    "logreg": ClassifierSpec("logreg", "Logistic regression",
                             "L2-normalised features (each photo view a unit vector), L2 penalty C=10, lbfgs, "
                             "max_iter=1000; random_state = seed"),
    "rf": ClassifierSpec("rf", "Random Forest (the Eden notebook's choice)",
                         "scikit-learn defaults: 100 trees, Gini impurity, sqrt(features) per split, "
                         "bootstrap samples, unlimited depth; random_state = seed"),
}

#: The top classifier of the dashboard and the command line: chosen by the estimate for new photos with the
#: views and resolution (``python -m toptune_core grid``; README, "An estimate for new photos").
DEFAULT_CLASSIFIER = "logreg"


def make_candidate(kind: str = DEFAULT_CLASSIFIER, *, random_state: int = 0):
    """A fresh, unfitted single top classifier of ``kind`` (logreg, rf or kernel), a scikit-learn estimator."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    if kind == "rf":
        # n_jobs only sets how many cores build trees; the model is the same as with scikit-learn's default.
        return RandomForestClassifier(random_state=random_state, n_jobs=-1)
    if kind == "logreg":  # on unit vectors, as the kernel: measured above standardised features (README, Defaults)
        return make_pipeline(Normalizer(), LogisticRegression(C=10.0, max_iter=1000, random_state=random_state))
    if kind == "kernel":
        from toptune_core.methods.kernel import NystroemKernelClassifier

        return NystroemKernelClassifier(random_state=random_state)
    raise ToptuneError(f"Unknown classifier '{kind}'. Choose one of: {', '.join(CLASSIFIERS)}.")


def fit_classifier(clf, X: np.ndarray, y: np.ndarray, *, groups: Optional[Sequence] = None,
                   progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
                   chunk: int = 10) -> float:
    """Fit ``clf`` on (X, y), reporting progress; returns the fit time in seconds.

    ``groups``: near-duplicate group labels, for the classifiers that cross-validate (kernel, auto).
    A Random Forest is grown ``chunk`` trees at a time (warm start), so the
    progress bar moves and a cancel takes effect between chunks.
    """
    from sklearn.ensemble import RandomForestClassifier

    start = time.perf_counter()
    with one_blas_thread():
        if getattr(clf, "_fits_with_progress", False):
            clf.fit(X, y, groups, progress=progress, should_cancel=should_cancel)
        elif isinstance(clf, RandomForestClassifier):
            _grow_forest(clf, X, y, ProgressMeter("fit", clf.n_estimators, progress, "trees", should_cancel), chunk)
        else:
            meter = ProgressMeter("fit", 1, progress, "steps", should_cancel)
            meter.update(0)
            clf.fit(X, y)
            meter.update(1)
    return time.perf_counter() - start


def _grow_forest(clf, X: np.ndarray, y: np.ndarray, meter: ProgressMeter, chunk: int) -> None:
    total = clf.n_estimators
    meter.update(0)
    clf.set_params(warm_start=True)
    for n in range(min(chunk, total), total + chunk, chunk):
        clf.set_params(n_estimators=min(n, total))
        clf.fit(X, y)
        meter.update(min(n, total))
        if n >= total:
            break
    clf.set_params(warm_start=False)
