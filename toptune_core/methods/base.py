"""What every training method is: a scikit-learn-style estimator over photos.

Both methods (``TopTuner``: frozen features + a top classifier; ``FineTuner``:
the whole network trained) follow scikit-learn's conventions: parameters are
set in ``__init__`` only (defaults written once, in the signature), fitted
state ends in ``_``, and ``fit`` / ``predict_proba`` / ``save`` / ``load``.
The experiment (``toptune_core.experiment``) drives any of them the same way:

1. ``read(dataset)`` -> ``PhotoTable``: which photos are readable (the one
   rule of ``backbones.pixels``) and anything the method derives from all
   photos up front (top-tuning: the cached features);
2. the split is made over the readable photos, the same for every method;
3. ``fit(train, y, classes)`` on the training ``Photos`` only;
4. ``predict_proba(test)`` once, on the held-out ``Photos``;
5. ``save(folder)`` into the run's own folder (the store checksums the files;
   ``from_run`` reads them back); ``timings()`` and ``record()`` go into the run record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from toptune_core.methods.photos import Photos, PhotoTable  # noqa: F401 - part of the protocol
from toptune_core.progress import CancelCheck, ProgressCallback

EpochCallback = Callable[[dict], None]


class PhotoEstimator(BaseEstimator):
    """The interface both methods implement (see the module's docstring)."""

    #: "toptune" or "finetune": how the run store and the pages name the method.
    method: str = ""

    def read(self, dataset, *, progress: Optional[ProgressCallback] = None,
             should_cancel: Optional[CancelCheck] = None) -> PhotoTable:
        raise NotImplementedError

    def fit(self, photos: Photos, y: np.ndarray, classes: Sequence[str], *,
            progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
            on_epoch: Optional[EpochCallback] = None) -> "PhotoEstimator":
        raise NotImplementedError

    def predict_proba(self, photos: Photos, *, progress: Optional[ProgressCallback] = None,
                      should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        raise NotImplementedError

    def embed(self, photos: Photos, *, progress: Optional[ProgressCallback] = None,
              should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        """(n, dim) features the familiarity check compares (``trust.familiarity``): the frozen backbone's for
        top-tuning, the fine-tuned network's own penultimate features for a fine-tune. ``predict_proba`` on
        ``Photos(paths, features=embed(...))`` then needs no second pass through the network."""
        raise NotImplementedError

    def save(self, folder: Path) -> list[str]:
        """Write the fitted model into ``folder``; returns the file names written (the store checksums them)."""
        raise NotImplementedError

    @classmethod
    def from_run(cls, store, run, **kwargs) -> "PhotoEstimator":
        """The fitted estimator a completed run saved, read through the run store's checked files
        (``RunStore.model_file`` / ``RunStore.load_model``)."""
        raise NotImplementedError

    def timings(self) -> dict:
        """Fitted facts for the run record's timings (``fit_seconds`` at least)."""
        raise NotImplementedError

    def record(self) -> dict:
        """Settings for the run record's params (JSON-ready)."""
        raise NotImplementedError

    def stages(self, datasets: list) -> list["PhotoEstimator"]:
        """The estimators a run fits one after the other on the same split, each replacing the one before as the
        run's model: a first model fast, then the final one (the last, ``self``). One stage by default."""
        return [self]

    def fits_with_groups(self) -> bool:
        """Whether ``fit`` reads ``Photos.groups`` (near-duplicate groups for its own cross-validation); a run
        finds them before such a fit. True unless an estimator knows better."""
        return True

    def split_notes(self) -> dict:
        """Extra facts for the run record's split (e.g. the fine-tune's validation photos)."""
        return {}

    @property
    def classes(self) -> list[str]:
        return list(getattr(self, "classes_", []))
