"""``TopTuner``: top-tuning as an estimator. A frozen backbone's features (cached) + a top classifier.

``read`` gets the features of every photo of a dataset from the feature cache
(extracting and caching them on a miss); its readable-photo mask is the
extraction's. ``fit`` trains the top classifier on the training photos'
features only, every view of each photo a training row (``features.views``;
a photo's views share its group, so the classifier's own cross-validation
keeps them together); ``predict_proba`` scores photos from their features
(cached ones, or extracted on the spot for new photos), averaging the
probabilities over each photo's views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.errors import DatasetError, ToptuneError
from toptune_core.evaluation import full_proba
from toptune_core.features import views as view_sets
from toptune_core.methods.base import PhotoEstimator, Photos, PhotoTable
from toptune_core.methods.classifiers import (CLASSIFIERS, DEFAULT_CLASSIFIER, chosen_settings, fit_classifier,
                                              make_classifier)
from toptune_core.progress import CancelCheck, ProgressCallback
from toptune_core.system import one_blas_thread

MODEL_FILE = "model.joblib"


class TopTuner(PhotoEstimator):
    """Top-tune ``backbone`` + ``classifier`` (a key of ``methods.classifiers.CLASSIFIERS``).

    ``views``: the view set of every photo (``features.views``; None: the
    settings' default); ``resolution``: the backbone's input side in pixels
    (None: its own). ``extractor`` and ``cache``: an already loaded
    ``FeatureExtractor`` for ``backbone`` (the dashboard keeps one per
    backbone; it is reconfigured to these views and resolution, sharing its
    loaded model) and the ``FeatureCache`` to use; None makes them on first use.
    """

    method = "toptune"

    def __init__(self, backbone: str = DEFAULT_BACKBONE, classifier: str = DEFAULT_CLASSIFIER, seed: int = 0, *,
                 views: Optional[str] = None, resolution: Optional[int] = None, extractor=None, cache=None):
        self.backbone = backbone
        self.classifier = classifier
        self.seed = seed
        self.views = views
        self.resolution = resolution
        self.extractor = extractor
        self.cache = cache

    def check_params(self) -> "TopTuner":
        from toptune_core.backbones.pixels import check_resolution

        if self.classifier not in CLASSIFIERS:
            make_classifier(self.classifier)  # raises the "unknown classifier" error
        if self.extractor is not None and self.extractor.backbone != self.backbone:
            raise DatasetError(f"The extractor is for {self.extractor.backbone}, not {self.backbone}.")
        if self.views is not None:
            view_sets.check_views(self.views)
        check_resolution(self.resolution)
        return self

    def _extractor(self):
        if self.extractor is None:
            from toptune_core.features.extractor import FeatureExtractor

            self.extractor = FeatureExtractor(self.backbone, views=self.views, resolution=self.resolution)
        elif not hasattr(self, "classifier_"):  # a fitted tuner keeps the extractor its model was trained with
            self.extractor = self.extractor.reconfigured(views=self.views, resolution=self.resolution)
        return self.extractor

    # --- the protocol -------------------------------------------------------------------------

    def read(self, dataset, *, progress: Optional[ProgressCallback] = None,
             should_cancel: Optional[CancelCheck] = None) -> PhotoTable:
        from toptune_core.features.cache import FeatureCache, get_features

        self.check_params()
        self.cache = self.cache or FeatureCache()
        fs = get_features(dataset, self._extractor(), self.cache, progress=progress, should_cancel=should_cancel)
        # which engine extracted these features (when they were extracted), for the run record
        self.extraction_engine_ = {k: fs.entry.meta.get(k) for k in ("engine", "precision", "engine_note")
                                  if k in fs.entry.meta}
        index = {rel: i for i, rel in enumerate(fs.entry.relpaths)}
        errors = [(index.get(rel, -1), reason) for rel, reason in fs.entry.errors]
        return PhotoTable(fs.entry.ok, errors, fs.entry.features, fs.seconds, fs.entry.extract_seconds, fs.cache_hit)

    def stages(self, datasets: list) -> list["TopTuner"]:
        """Progressive top-tuning: when many photos' features are still to extract (``features.estimate``), first
        a model on the photo as it is (one view: the first of every view set, so no work is wasted), then the
        final one on every view (``features.views.stages_for``); else the final model alone."""
        from toptune_core.features.cache import FeatureCache
        from toptune_core.features.estimate import estimate_extraction
        from toptune_core.features.views import stages_for

        self.check_params()
        self.cache = self.cache or FeatureCache()
        extractor = self._extractor()
        if not any(estimate_extraction(ds, extractor, self.cache).staged for ds in datasets):
            return [self]
        return [self if views == extractor.views else
                TopTuner(self.backbone, self.classifier, self.seed, views=views, resolution=self.resolution,
                         extractor=extractor.reconfigured(views=views), cache=self.cache)
                for views in stages_for(extractor.views)]

    def fits_with_groups(self) -> bool:
        """Only the classifiers that cross-validate (kernel, auto) read the groups."""
        return bool(getattr(make_classifier(self.classifier), "_fits_with_progress", False))

    def _features(self, photos: Photos, progress=None, should_cancel=None) -> np.ndarray:
        if photos.features is not None:
            return photos.features
        return self._extractor().features_of_photos(photos.paths, progress=progress, should_cancel=should_cancel)

    def fit(self, photos: Photos, y, classes: Sequence[str], *, progress: Optional[ProgressCallback] = None,
            should_cancel: Optional[CancelCheck] = None, on_epoch=None) -> "TopTuner":
        self.check_params()
        extractor = self._extractor()
        X, rows_y, rows_groups = view_sets.flatten(self._features(photos, progress, should_cancel), np.asarray(y),
                                                   photos.groups)
        self.classes_ = [str(c) for c in classes]
        self.classifier_ = make_classifier(self.classifier, random_state=self.seed)
        if "n_views" in self.classifier_.get_params():  # the automatic choice scores photos, not views
            self.classifier_.set_params(n_views=extractor.n_views)
        self.fit_seconds_ = fit_classifier(self.classifier_, X, rows_y, groups=rows_groups,
                                           progress=progress, should_cancel=should_cancel)
        self.data_config_, self.views_ = extractor.data_config, extractor.views
        return self

    def predict_proba(self, photos: Photos, *, progress: Optional[ProgressCallback] = None,
                      should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        if not hasattr(self, "classifier_"):
            raise ToptuneError("This top-tuner has not been trained yet.")
        X = view_sets.as_views(self._features(photos, progress, should_cancel))
        n, v, d = X.shape
        with one_blas_thread():
            return view_sets.average(full_proba(self.classifier_, X.reshape(n * v, d), len(self.classes_)), v)

    def embed(self, photos: Photos, *, progress: Optional[ProgressCallback] = None,
              should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        """The frozen backbone's features of every view, (n, n_views, dim) (the cached ones when ``photos``
        carries them)."""
        return self._features(photos, progress, should_cancel)

    def save(self, folder: Path) -> list[str]:
        """``model.joblib`` (scikit-learn), and the same classifier as ONNX (``portable.top``) for prediction
        and export without scikit-learn."""
        import joblib

        from toptune_core.portable.top import write_portable_files

        joblib.dump({"kind": "toptune", "classifier": self.classifier_, "classes": self.classes_,
                     "backbone": self.backbone, "data_config": self.data_config_, "views": self.views_},
                    Path(folder) / MODEL_FILE)
        return [MODEL_FILE] + write_portable_files(folder, self.classifier_, self.classes_, self.backbone,
                                                   self.data_config_, self.classifier, self.views_)

    @classmethod
    def from_run(cls, store, run, *, extractor=None, **_) -> "TopTuner":
        """The top-tuner a completed run saved (``RunStore.load_model`` checks the file before unpickling)."""
        from toptune_core.features.extractor import extractor_for

        saved = store.load_model(run.id)
        backbone, views = saved["backbone"], saved.get("views", "1")  # runs from before views: one view
        tuner = cls(backbone, run.classifier or "rf", views=views,
                    extractor=extractor_for(backbone, saved.get("data_config"), views, extractor))
        tuner.classifier_, tuner.classes_ = saved["classifier"], list(saved["classes"])
        tuner.data_config_, tuner.views_ = tuner.extractor.data_config, views
        return tuner

    def timings(self) -> dict:
        return {"fit_seconds": self.fit_seconds_, **getattr(self, "extraction_engine_", {})}

    def record(self) -> dict:
        extractor = self._extractor()
        out = {"classifier_settings": CLASSIFIERS[self.classifier].settings, "data_config": extractor.data_config,
               "views": extractor.views, "n_views": extractor.n_views, "resolution": extractor.resolution}
        if hasattr(self, "classifier_"):
            out["classifier_choice"] = chosen_settings(self.classifier_)  # kernel: width, penalty; auto: CV table
        return out

    @property
    def record_classifier(self) -> Optional[str]:
        return self.classifier
