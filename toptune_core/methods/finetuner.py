"""``FineTuner``: the comparison fine-tune as an estimator over photos (the ``PhotoEstimator`` protocol).

The same backbone and pretrained weights get a new head and are trained end to
end (``finetune.loop`` with ``finetune.callbacks`` and ``finetune.schedule``;
the recipe in words is ``finetune.recipe``). This module owns the estimator:
its parameters (written once, in ``__init__``'s signature), checking them,
choosing the device and the torch threads (``system.thread_policy``, the
same policy feature extraction uses), carving the validation part from the
training photos, and ``read`` / ``fit`` / ``predict_proba`` / ``save`` /
``load``. Photos are seen through the one pixel pipeline
(``backbones.pixels``), decoded ahead by ``features.reader``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, create_model, get_backbone
from toptune_core.backbones.pixels import PixelPipeline, eval_data_config
from toptune_core.data.split import stratified_split
from toptune_core.data.images import ImageSource
from toptune_core.errors import DatasetError, ToptuneError
from toptune_core.features import views as view_sets
from toptune_core.features.reader import chunked, read_ahead
from toptune_core.finetune import callbacks as cb
from toptune_core.finetune.loop import TrainSetup, predict_batches, train
from toptune_core.finetune.recipe import FINETUNE_RECIPE
from toptune_core.methods.base import EpochCallback, PhotoEstimator, Photos, PhotoTable
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.system import nothing, thread_policy, torch_threads

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "finetune.json"


def _paths(photos: "Photos | Sequence[ImageSource]") -> list:
    return list(photos.paths) if isinstance(photos, Photos) else list(photos)


def jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists and NumPy scalars as Python numbers (for JSON)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


class FineTuner(PhotoEstimator):
    """Fine-tune a pretrained timm backbone with a new head (parameters: see ``finetune.recipe``).

    ``fit(photos, y, classes)`` carves its own validation part from the photos
    it is given (``val_fraction``, stratified, seeded), so pass it the
    training photos only. Fitted: ``classes_``, ``model_``, ``data_config_``,
    ``curve_`` (one dict per epoch: epoch, phase, train_loss, train_accuracy,
    val_loss, val_accuracy, lr, elapsed, epoch_seconds, images_per_second,
    best, partial), ``train_paths_``, ``val_paths_``, ``validation_note_``,
    ``best_epoch_``, ``epochs_run_``, ``stop_reason_``, ``train_seconds_``,
    ``images_per_second_``, ``images_per_second_by_phase_``, ``device_``, ``threads_``.
    """

    method = "finetune"

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, epochs: int = 3, head_epochs: int = 1,
                 batch_size: int = 32, lr: float = 5e-4, head_lr: float = 2e-3, weight_decay: float = 0.05,
                 label_smoothing: float = 0.1, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.01,
                 crop_scale: Sequence[float] = (0.35, 1.0), flips: bool = True, freeze_blocks: Optional[int] = None,
                 budget_seconds: Optional[float] = 900.0, val_fraction: float = 0.15, patience: int = 3,
                 device: Optional[str] = None, seed: int = 0, num_threads: Optional[int] = None,
                 channels_last: bool = True, mixed_precision: bool = True, decode_workers: int = 1,
                 test_views: str = view_sets.DEFAULT_VIEWS):
        self.backbone = backbone
        self.epochs = epochs
        self.head_epochs = head_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.warmup_fraction = warmup_fraction
        self.min_lr_ratio = min_lr_ratio
        self.crop_scale = crop_scale
        self.flips = flips
        self.freeze_blocks = freeze_blocks
        self.budget_seconds = budget_seconds
        self.val_fraction = val_fraction
        self.patience = patience
        self.device = device
        self.seed = seed
        self.num_threads = num_threads
        self.channels_last = channels_last
        self.mixed_precision = mixed_precision
        self.decode_workers = decode_workers
        self.test_views = test_views

    # --- parameters ---------------------------------------------------------------------------

    def check_params(self) -> "FineTuner":
        """Raise a ToptuneError naming the first setting that cannot work."""
        def bad(what: str) -> ToptuneError:
            return ToptuneError(f"Fine-tune setting {what}.")

        if self.test_views not in view_sets.VIEW_SETS:
            raise bad(f"test_views must be one of {', '.join(view_sets.VIEW_SETS)} (got {self.test_views!r})")
        for name in ("epochs", "head_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(f"{name} must be a whole number >= 0 (got {getattr(self, name)!r})")
        if self.epochs + self.head_epochs < 1:
            raise bad("epochs + head_epochs must be at least 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad(f"batch_size must be a whole number >= 1 (got {self.batch_size!r})")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise bad(f"{name} must be > 0 (got {getattr(self, name)!r})")
        if not self.weight_decay >= 0:
            raise bad(f"weight_decay must be >= 0 (got {self.weight_decay!r})")
        if not 0 <= self.label_smoothing < 1:
            raise bad(f"label_smoothing must be in [0, 1) (got {self.label_smoothing!r})")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise bad("warmup_fraction must be in [0, 1) and min_lr_ratio in [0, 1]")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise bad(f"crop_scale must be (low, high) with 0 < low <= high <= 1 (got {self.crop_scale!r})")
        if self.freeze_blocks is not None and (not isinstance(self.freeze_blocks, int) or self.freeze_blocks < 0):
            raise bad(f"freeze_blocks must be empty (train every block) or a whole number >= 0 "
                      f"(got {self.freeze_blocks!r})")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise bad(f"budget_seconds must be > 0 or empty for no limit (got {self.budget_seconds!r})")
        if not 0 <= self.val_fraction < 0.9:
            raise bad(f"val_fraction must be in [0, 0.9) (got {self.val_fraction!r})")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise bad(f"patience must be a whole number >= 1 (got {self.patience!r})")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise bad(f"num_threads must be a whole number >= 1 (got {self.num_threads!r})")
        get_backbone(self.backbone)
        return self

    def _device(self) -> "torch.device":
        import torch

        if self.device:
            dev = torch.device(self.device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ToptuneError("Fine-tune setting device is 'cuda', but no CUDA GPU is available here.")
            return dev
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _threads(self) -> int:
        """Torch threads of the training on a CPU: ``num_threads``, else the one thread policy's choice."""
        return self.num_threads or thread_policy().training_threads

    def _amp_dtype(self, device) -> Optional["torch.dtype"]:
        import torch

        if device.type != "cuda" or not self.mixed_precision:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _pipeline(self) -> PixelPipeline:
        pipeline = getattr(self, "_pixels", None)
        if pipeline is None or pipeline.cfg is not self.data_config_:
            pipeline = self._pixels = PixelPipeline(self.data_config_)
            pipeline.require_pixel_stage()
        return pipeline

    # --- reading ------------------------------------------------------------------------------

    def read(self, dataset, *, progress: Optional[ProgressCallback] = None,
             should_cancel: Optional[CancelCheck] = None) -> PhotoTable:
        """Which photos can be read, by the rule every method uses (``PixelPipeline.readable``); no features."""
        start = time.perf_counter()
        paths = list(dataset.paths)
        pipeline = PixelPipeline(eval_data_config(self.backbone))
        meter = ProgressMeter("check", len(paths), progress, "images", should_cancel)
        meter.update(0, "checking that every photo can be read")
        ok = np.ones(len(paths), dtype=bool)
        errors: list[tuple[int, str]] = []
        for chunk, reasons in read_ahead(chunked(range(len(paths)), 64),
                                         lambda c: [pipeline.readable(paths[i]) for i in c],
                                         max(1, self.decode_workers), "finetune-check"):
            for i, reason in zip(chunk, reasons):
                if reason is not None:
                    ok[i] = False
                    errors.append((i, reason))
            meter.update(chunk[-1] + 1)
        return PhotoTable(ok=ok, errors=errors, seconds=time.perf_counter() - start)

    # --- fitting ------------------------------------------------------------------------------

    def _carve_validation(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        idx = np.arange(len(labels))
        if self.val_fraction <= 0:
            return idx, idx[:0], "no validation part (val_fraction 0): the last epoch's weights are kept"
        try:
            split = stratified_split(labels, test_size=self.val_fraction, seed=self.seed)
        except DatasetError as e:
            return idx, idx[:0], f"no validation part ({e}) - the last epoch's weights are kept"
        return split.train_idx, split.test_idx, (f"validation: {len(split.test_idx)} of the {len(labels)} training "
                                                 f"photos (stratified, seed {self.seed})")

    def fit(self, photos: "Photos | Sequence[ImageSource]", y: Sequence[int], classes: Sequence[str], *,
            progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
            on_epoch: Optional[EpochCallback] = None) -> "FineTuner":
        """Fine-tune on these (training) photos. ``on_epoch(curve_entry)`` is called after each epoch.

        Raises ``Cancelled`` when ``should_cancel()`` becomes true (checked inside
        every block of the network, so within a fraction of a second). On a CPU
        the training runs on ``_threads()`` torch threads; torch's setting is restored afterwards.
        """
        self.check_params()
        paths = [str(p) for p in _paths(photos)]
        labels = np.asarray(y, dtype=np.int64)
        if len(paths) != len(labels) or not len(paths):
            raise DatasetError("Fine-tuning needs photos with one label each.")
        device = self._device()
        self.device_, self.threads_ = str(device), self._threads()
        with torch_threads(self.threads_) if device.type == "cpu" else nothing():
            return self._fit(paths, labels, classes, device, progress, should_cancel, on_epoch)

    def _fit(self, paths, labels, classes, device, progress, should_cancel, on_epoch) -> "FineTuner":
        import torch

        start = time.perf_counter()
        watch = cb.CancelWatch(should_cancel)
        watch.check(force=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(self.seed)
        self.classes_ = [str(c) for c in classes]
        fit_i, val_i, self.validation_note_ = self._carve_validation(labels)
        self.train_paths_, self.val_paths_ = [paths[i] for i in fit_i], [paths[i] for i in val_i]
        if progress:
            progress(cb.train_event(None, "load", 0, None, f"loading {self.backbone}", unit="steps"))
        self.data_config_ = eval_data_config(self.backbone)
        model = create_model(self.backbone, num_classes=len(self.classes_)).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model_ = model
        callbacks = [watch, cb.TimeBudget(), cb.BestWeights(), cb.EarlyStopping(self.patience)]
        if progress:
            callbacks.append(cb.ProgressReporter(progress))
        setup = TrainSetup(model, device, self._amp_dtype(device), self._pipeline(), paths, labels, fit_i, val_i,
                           self)
        state, self.curve_ = train(setup, cb.Callbacks(callbacks), on_epoch, lambda: watch.check(force=True))
        self.best_epoch_, self.epochs_run_, self.stop_reason_ = state.best_epoch, state.epoch_no, state.stop_reason
        self.train_seconds_ = time.perf_counter() - start
        steps = state.step_seconds
        self.images_per_second_ = state.images_done / max(1e-9, sum(steps.values())) if state.images_done else None
        self.images_per_second_by_phase_ = {p: state.images_phase[p] / steps[p] for p in steps if steps[p] > 0}
        return self

    @property
    def curve(self) -> list[dict]:
        return list(getattr(self, "curve_", []))

    # --- predicting ---------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise ToptuneError("This fine-tuner has not been trained yet.")

    def _batches(self, sources: list, progress, should_cancel, *, embed: bool, stage: str) -> list[np.ndarray]:
        self._check_fitted()
        device = next(self.model_.parameters()).device
        meter = ProgressMeter(stage, len(sources), progress, "images", should_cancel) if progress else None
        watch = cb.CancelWatch(should_cancel)
        views = view_sets.check_views(self.test_views)
        return predict_batches(self.model_, sources, self._pipeline(), device, self._amp_dtype(device),
                               batch_size=max(1, 2 * self.batch_size // view_sets.n_views(views)),
                               workers=self.decode_workers, channels_last=self.channels_last,
                               check=lambda: watch.check(force=True), on_batch=meter.update if meter else None,
                               embed=embed, views=views)

    def embed(self, photos: "Photos | Sequence[ImageSource]", *, progress: Optional[ProgressCallback] = None,
              should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        """(n, n_views, dim) the fine-tuned network's own penultimate features (what its classifier sees) of each
        test-time view (``test_views``)."""
        if isinstance(photos, Photos) and photos.features is not None:
            return photos.features
        out = self._batches(_paths(photos), progress, should_cancel, embed=True, stage="embed")
        n_views = view_sets.n_views(self.test_views)
        return np.concatenate(out) if out else np.zeros((0, n_views, self.model_.num_features), dtype=np.float32)

    def predict_proba(self, photos: "Photos | Sequence[ImageSource]", *, progress: Optional[ProgressCallback] = None,
                      should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        """(n, n_classes) class probabilities, averaged over the test-time views (``test_views``); photos go through
        timm's evaluation transform. Photos that carry their ``embed`` features only go through the classifier."""
        if isinstance(photos, Photos) and photos.features is not None:
            return self._head_proba(photos.features)
        out = self._batches(_paths(photos), progress, should_cancel, embed=False, stage="evaluate")
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def _head_proba(self, features: np.ndarray) -> np.ndarray:
        import torch

        self._check_fitted()
        head = self.model_.get_classifier()
        device = next(self.model_.parameters()).device
        F = view_sets.as_views(features)
        n, v, d = F.shape
        with torch.inference_mode():
            logits = head(torch.as_tensor(F.reshape(n * v, d), dtype=torch.float32, device=device))
        return view_sets.average(torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64), v)

    def predict(self, photos: "Photos | Sequence[ImageSource]") -> np.ndarray:
        """Predicted class indices."""
        return self.predict_proba(photos).argmax(axis=1)

    # --- the run record -----------------------------------------------------------------------

    def timings(self) -> dict:
        t = self.train_seconds_
        return {"fit_seconds": t, "train_seconds": t, "epochs_run": self.epochs_run_,
                "best_epoch": self.best_epoch_, "stop_reason": self.stop_reason_,
                "images_per_second": self.images_per_second_,
                "images_per_second_by_phase": self.images_per_second_by_phase_, "device": self.device_,
                "threads": self.threads_}

    def record(self) -> dict:
        return {"data_config": eval_data_config(self.backbone), "hyper": jsonable(self.get_params()),
                "recipe": FINETUNE_RECIPE}

    def split_notes(self) -> dict:
        return {"n_val": len(self.val_paths_), "validation": self.validation_note_, "val_paths": self.val_paths_}

    # --- saving -------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> list[str]:
        """Write the configuration (JSON) and the weights (safetensors) into ``folder``, each atomically."""
        from safetensors.torch import save_file

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"backbone": self.backbone, "classes": self.classes, "data_config": self.data_config_,
                  "params": jsonable(self.get_params()), "best_epoch": getattr(self, "best_epoch_", None)}
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, folder / CONFIG_FILE)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model_.state_dict().items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"backbone": self.backbone, "classes": json.dumps(self.classes)})
        os.replace(tmp, folder / WEIGHTS_FILE)
        return [CONFIG_FILE, WEIGHTS_FILE]

    @classmethod
    def load(cls, folder: str | Path, *, device: Optional[str] = None) -> "FineTuner":
        """A fine-tuner saved by ``save`` into ``folder``: the backbone with its new head, weights loaded strictly."""
        folder = Path(folder)
        if not (folder / WEIGHTS_FILE).exists():
            raise ToptuneError(f"The fine-tuned weights are missing from '{folder}'.")
        return cls._load_files(folder / CONFIG_FILE, folder / WEIGHTS_FILE, device)

    @classmethod
    def from_run(cls, store, run, *, device: Optional[str] = None, **_) -> "FineTuner":
        """The fine-tuner a completed run saved, through the store's checked files (``RunStore.model_file``)."""
        if run.method != cls.method:
            raise ToptuneError(f"Run {run.id} is a {run.method} run, not a fine-tune.")
        return cls._load_files(store.model_file(run.id, CONFIG_FILE), store.model_file(run.id, WEIGHTS_FILE), device)

    @classmethod
    def _load_files(cls, config_path: Path, weights_path: Path, device: Optional[str]) -> "FineTuner":
        import torch
        from safetensors.torch import load_file

        try:
            config = json.loads(Path(config_path).read_text())
        except (OSError, ValueError) as e:
            raise ToptuneError(f"The fine-tuned model in '{Path(config_path).parent}' cannot be read ({e}).") from None
        known = set(cls._get_param_names())
        params = {k: v for k, v in config.get("params", {}).items() if k in known}
        if "crop_scale" in params:
            params["crop_scale"] = tuple(params["crop_scale"])
        tuner = cls(**{**params, "device": device})
        tuner.classes_, tuner.data_config_ = list(config["classes"]), config["data_config"]
        tuner.best_epoch_ = config.get("best_epoch")
        model = create_model(config["backbone"], num_classes=len(tuner.classes_), pretrained=False)
        try:
            model.load_state_dict(load_file(str(weights_path)), strict=True)
        except RuntimeError as e:
            raise ToptuneError(f"The fine-tuned weights in '{Path(weights_path).parent}' do not match "
                               f"{config['backbone']} ({str(e).splitlines()[0]}).") from None
        model = model.to(tuner._device())
        if tuner.channels_last:
            model = model.to(memory_format=torch.channels_last)
        tuner.model_ = model.eval()
        return tuner
