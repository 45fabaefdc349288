"""The comparison fine-tune: the same backbone, a new head, trained end to end, on the same split.

Top-tuning's claim ("comparable accuracy at a fraction of the training time")
is only as honest as the fine-tune it is compared with, so this is the
fine-tune a careful practitioner would run, in the spirit of fastai's
``fine_tune`` and the Eden Library notebooks:

* the same photos, the same seeded stratified split and the same held-out
  photos as the top-tuning run (``toptuning.split_for`` over the readable
  photos, with the same readability rule as feature extraction);
* the same backbone and pretrained weights with a new classification head;
* AdamW (no weight decay on biases and norms), label smoothing, a short
  head-only phase (backbone frozen, batch-norm statistics frozen) and then the
  whole network (or only its last N blocks, ``freeze_blocks``), each phase with
  a linear warm-up and a cosine decay of the learning rate, per step;
* light train-only augmentation: random resized crop at the model's input
  size and horizontal and vertical flips; evaluation uses timm's resolved
  evaluation transform, exactly as feature extraction does;
* a validation part carved from the *training* photos (stratified, seeded)
  picks the best epoch and stops early; the held-out photos are only ever
  scored once, at the end;
* CUDA with channels-last and mixed precision when a GPU is present, otherwise
  the CPU with a deliberate number of torch threads (one per available CPU);
* a wall-clock budget: when the planned epochs will not fit, the cosine
  schedule is re-planned to end inside the budget, and training stops at the
  budget in any case.

``FineTuner`` is the estimator (fit / predict_proba), ``run_finetuning`` the
recorded pipeline, ``FinetuneJob`` the same pipeline in a separate process that
can be cancelled at any moment, and ``load_finetuned`` what "Classify a photo"
uses.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import socket
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, create_model, get_backbone
from toptune_core.data.split import stratified_split
from toptune_core.errors import Cancelled, DatasetError, ImageError, JobInterrupted, ToptuneError
from toptune_core.evaluation import evaluate
from toptune_core.backbones.pixels import eval_data_config, eval_transform, resize_side
from toptune_core.data.images import ImageSource, load_rgb
from toptune_core.progress import CancelCheck, Progress, ProgressCallback, ProgressMeter, check_cancel
from toptune_core.runs.store import RunRecord, RunStore

if TYPE_CHECKING:
    import torch

#: Every default hyper-parameter of ``FineTuner`` (its constructor's defaults), for display in the UI.
#: ``None`` means "chosen automatically": device (CUDA if present, else CPU), num_threads (one per
#: available CPU), budget_seconds (no limit), freeze_blocks (every block trainable).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "backbone": DEFAULT_BACKBONE,
    "epochs": 3,  # full fine-tuning epochs, after the head-only ones
    "head_epochs": 1,  # epochs training only the new head (backbone frozen), first
    "batch_size": 32,
    "lr": 5e-4,  # peak learning rate of the full fine-tuning phase
    "head_lr": 2e-3,  # peak learning rate of the head-only phase
    "weight_decay": 0.05,  # AdamW's decoupled weight decay (not on biases and norms)
    "label_smoothing": 0.1,
    "warmup_fraction": 0.1,  # share of each phase's steps spent warming the learning rate up
    "min_lr_ratio": 0.01,  # the cosine ends at this fraction of the peak learning rate
    "crop_scale": (0.35, 1.0),  # random resized crop: share of the photo's area kept
    "flips": True,  # random horizontal and vertical flips (leaves have no up or down)
    "freeze_blocks": None,  # None: train every block; N: train only the last N blocks (and the head)
    "budget_seconds": 900.0,  # wall-clock limit of the training, in seconds (None: no limit)
    "val_fraction": 0.15,  # share of the training photos kept aside to pick the best epoch
    "patience": 3,  # stop after this many full epochs without a better validation score
    "device": None,
    "seed": 0,
    "num_threads": None,
    "channels_last": True,
    "mixed_precision": True,  # used on CUDA only (bf16 where supported, else fp16 with loss scaling)
    "decode_workers": 1,  # threads decoding photos while the model trains
}

#: The recipe in plain words, for the dashboard and the README.
FINETUNE_RECIPE: dict[str, str] = {
    "optimizer": "AdamW; no weight decay on biases and normalisation layers",
    "schedule": "per phase: linear warm-up, then cosine decay to 1% of the peak, updated every step",
    "phases": "head only (backbone and its batch-norm statistics frozen), then the whole network "
              "(or its last N blocks)",
    "loss": "cross-entropy with label smoothing",
    "augmentation": "training photos only: random resized crop at the model's input size, horizontal and "
                    "vertical flips",
    "evaluation preprocessing": "timm's resolved evaluation transform (resize, centre crop, normalise), the "
                                "same as feature extraction",
    "early stopping": "on a stratified validation part carved from the training photos; the best epoch's "
                      "weights are kept; held-out photos are scored once, at the end",
    "hardware": "CUDA with channels-last and mixed precision when present; otherwise the CPU with one "
                "torch thread per available CPU",
}

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "finetune.json"


# --- progress ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainProgress(Progress):
    """A training progress event: a ``Progress`` plus the epoch, phase, loss and last validation score."""

    epoch: int = 0  # 1-based; counts head and full epochs together
    epochs: int = 0  # planned epochs in all (may shrink to fit the budget)
    phase: str = ""  # "head" or "full"
    step: int = 0  # step within the epoch
    steps: int = 0  # steps per epoch
    loss: Optional[float] = None  # running mean training loss of the epoch
    val_accuracy: Optional[float] = None  # of the last finished epoch
    epoch_end: bool = False


# --- small helpers -------------------------------------------------------------------------------

def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so a container's limit counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _lr_at(step: int, total: int, peak: float, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of ``total`` steps, then cosine decay to ``min_ratio``."""
    total = max(1, total)
    warm = max(1, round(warmup_fraction * total)) if warmup_fraction > 0 else 0
    if step < warm:
        return peak * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class _CancelWatch:
    """Asks ``should_cancel`` at most every ``interval`` seconds; raises ``Cancelled`` when it says yes.

    Called between steps, and from hooks inside the model's forward and backward
    passes, so a cancel takes effect within one block's computation, not one step's.
    """

    def __init__(self, should_cancel: Optional[CancelCheck], interval: float = 0.1):
        self.should_cancel, self.interval = should_cancel, interval
        self._last = 0.0

    def check(self, force: bool = False) -> None:
        if self.should_cancel is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            if self.should_cancel():
                raise Cancelled("Fine-tuning was cancelled.")


class _Pixels:
    """Photo -> 8-bit pixels at the model's input size, for evaluation (timm's eval transform) or training.

    Decoding threads run only Pillow and NumPy (never a torch operator, which
    would start an OpenMP team per thread); ``to_tensor`` turns a whole batch
    into the normalised float tensor in the main thread, with exactly the
    arithmetic of timm's ToTensor + Normalize.
    """

    def __init__(self, data_config: dict):
        from PIL import Image
        from torchvision import transforms as T

        self.cfg = data_config
        self.size = int(data_config["input_size"][-1])
        self.min_size = resize_side(data_config)
        steps = list(getattr(eval_transform(data_config), "transforms", []))
        names = [type(t).__name__ for t in steps]
        if not (len(steps) >= 2 and names[-2] in ("ToTensor", "MaybeToTensor") and names[-1] == "Normalize"
                and not any(n in ("ToTensor", "MaybeToTensor", "Normalize") for n in names[:-2])):
            raise ToptuneError(f"The evaluation transform of this backbone ({', '.join(names)}) is not supported "
                               "for fine-tuning.")
        self._eval_steps = T.Compose(steps[:-2])  # Pillow steps: resize, centre crop
        self.mean = [float(v) for v in steps[-1].mean]
        self.std = [float(v) for v in steps[-1].std]
        self._resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                          "lanczos": Image.LANCZOS}.get(str(data_config.get("interpolation")), Image.BICUBIC)

    def eval_pixels(self, source: ImageSource) -> np.ndarray:
        """(H, W, 3) uint8: load_rgb, then timm's eval resize and centre crop."""
        return np.array(self._eval_steps(load_rgb(source, min_size=self.min_size)), dtype=np.uint8)

    def train_pixels(self, source: ImageSource, rng: np.random.Generator, scale: Sequence[float],
                     flips: bool) -> np.ndarray:
        """(H, W, 3) uint8: a random resized crop (torchvision's sampling rule, drawn from ``rng``) and flips."""
        from PIL import Image

        im = load_rgb(source, min_size=self.min_size)
        top, left, h, w = _random_resized_crop_box(im.width, im.height, rng, scale, (3 / 4, 4 / 3))
        im = im.resize((self.size, self.size), self._resample, box=(left, top, left + w, top + h))
        if flips:
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_TOP_BOTTOM)
        return np.array(im, dtype=np.uint8)

    def to_tensor(self, pixels: np.ndarray, device: "torch.device", channels_last: bool) -> "torch.Tensor":
        """(N, H, W, 3) uint8 -> normalised float32 (N, 3, H, W) on ``device``."""
        import torch

        x = torch.from_numpy(pixels)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last already
        if not channels_last:
            x = x.contiguous()
        x = x.to(torch.float32).div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def _random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale: Sequence[float],
                             ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from a NumPy generator: (top, left, h, w)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _batches(load: Callable[[int], np.ndarray], order: Sequence[int], batch_size: int, workers: int,
             size: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """Decode ``order`` in batches in background threads, at most ``workers + 1`` batches ahead of the model."""
    chunks = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]

    def load_batch(idx: list[int]) -> np.ndarray:
        out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
        for k, i in enumerate(idx):
            out[k] = load(i)
        return out

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="finetune-decode")
    try:
        pending = deque(pool.submit(load_batch, c) for c in chunks[:workers + 1])
        nxt = len(pending)
        for c in chunks:
            pixels = pending.popleft().result()
            if nxt < len(chunks):
                pending.append(pool.submit(load_batch, chunks[nxt]))
                nxt += 1
            yield c, pixels
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def readable_photos(paths: Sequence[str | Path], data_config: dict, *, workers: int = 1,
                    progress: Optional[ProgressCallback] = None,
                    should_cancel: Optional[CancelCheck] = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Which photos can be read, by the same rule as feature extraction (``load_rgb`` at the resize side).

    Returns (ok mask, [(index, plain-word reason)]). The split is made over the
    readable photos, so a fine-tune holds out exactly the photos a top-tuning
    run with the same seed holds out.
    """
    n = len(paths)
    min_size = resize_side(data_config)
    meter = ProgressMeter("check", n, progress, "images", should_cancel)
    meter.update(0, "checking that every photo can be read")

    def one(i: int) -> Optional[str]:
        try:
            load_rgb(paths[i], min_size=min_size)
            return None
        except ImageError as e:
            return str(e)
        except Exception as e:  # the same rule as extraction: any decoder failure makes the photo unreadable
            return f"'{Path(str(paths[i])).name}' could not be read ({type(e).__name__}: {e})."

    ok = np.ones(n, dtype=bool)
    errors: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="finetune-check") as pool:
        for start in range(0, n, 64):
            for i, reason in zip(range(start, min(n, start + 64)), pool.map(one, range(start, min(n, start + 64)))):
                if reason is not None:
                    ok[i] = False
                    errors.append((i, reason))
            meter.update(min(n, start + 64))
    return ok, errors


def _layer_groups(model) -> tuple[list[list[str]], list[str]]:
    """The backbone's parameter names in blocks (input to output), and the classifier's parameter names.

    Uses timm's own grouping (``group_matcher``, fine-grained: one group per
    block; the stem is the first group, the last block carries the final
    convolution); models without one fall back to their top-level modules.
    """
    clf = model.get_classifier()
    clf_prefix = next(name for name, mod in model.named_modules() if mod is clf)
    head = [n for n, _ in model.named_parameters() if n == clf_prefix or n.startswith(clf_prefix + ".")]
    try:
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=False))
        groups = [list(names) for _, names in sorted(grouped.items())]
    except Exception:
        groups = []
        for child, mod in model.named_children():
            names = [f"{child}.{n}" for n, _ in mod.named_parameters()]
            if names:
                groups.append(names)
    head_set = set(head)
    groups = [[n for n in g if n not in head_set] for g in groups]
    return [g for g in groups if g], head


# --- the estimator -------------------------------------------------------------------------------

class FineTuner(BaseEstimator):
    """Fine-tune a pretrained timm backbone with a new head; sklearn-like (parameters in the constructor).

    ``fit(paths, labels, classes)`` carves its own validation part from the
    photos it is given (``val_fraction``, stratified, seeded), so pass it the
    training photos only. After ``fit``: ``classes``, ``curve`` (one dict per
    epoch: epoch, phase, train_loss, train_accuracy, val_loss, val_accuracy,
    lr, elapsed, epoch_seconds, images_per_second, best, partial), and
    ``train_paths_``, ``val_paths_``, ``best_epoch_``, ``epochs_run_``,
    ``stop_reason_``, ``train_seconds_``, ``images_per_second_``,
    ``device_``, ``threads_``.

    See ``FINETUNE_DEFAULTS`` for what each parameter means.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, epochs: int = 3, head_epochs: int = 1,
                 batch_size: int = 32, lr: float = 5e-4, head_lr: float = 2e-3, weight_decay: float = 0.05,
                 label_smoothing: float = 0.1, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.01,
                 crop_scale: Sequence[float] = (0.35, 1.0), flips: bool = True, freeze_blocks: Optional[int] = None,
                 budget_seconds: Optional[float] = 900.0, val_fraction: float = 0.15, patience: int = 3,
                 device: Optional[str] = None, seed: int = 0, num_threads: Optional[int] = None,
                 channels_last: bool = True, mixed_precision: bool = True, decode_workers: int = 1):
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
        self.classes: list[str] = []
        self.curve: list[dict] = []
        self.model_ = None
        self.data_config_: Optional[dict] = None

    # --- parameters ---------------------------------------------------------------------------

    def check_params(self) -> "FineTuner":
        """Raise a ToptuneError naming the first setting that cannot work."""
        def bad(what: str) -> ToptuneError:
            return ToptuneError(f"Fine-tune setting {what}.")

        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise bad(f"epochs must be a whole number >= 0 (got {self.epochs!r})")
        if not isinstance(self.head_epochs, int) or self.head_epochs < 0:
            raise bad(f"head_epochs must be a whole number >= 0 (got {self.head_epochs!r})")
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

    def _amp_dtype(self, device) -> Optional["torch.dtype"]:
        import torch

        if device.type != "cuda" or not self.mixed_precision:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

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

    def fit(self, paths: Sequence[str | Path], labels: Sequence[int], classes: Sequence[str], *,
            progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
            on_epoch: Optional[Callable[[dict], None]] = None) -> "FineTuner":
        """Fine-tune on these (training) photos. ``on_epoch(curve_entry)`` is called after each epoch.

        Raises ``Cancelled`` when ``should_cancel()`` becomes true (checked inside
        every block of the network, so within a fraction of a second).
        """
        import torch

        threads_before = torch.get_num_threads()
        try:
            return self._fit(paths, labels, classes, progress, should_cancel, on_epoch)
        finally:
            if torch.get_num_threads() != threads_before:
                torch.set_num_threads(threads_before)

    def _fit(self, paths, labels, classes, progress, should_cancel, on_epoch) -> "FineTuner":
        import torch

        self.check_params()
        start = time.perf_counter()
        watch = _CancelWatch(should_cancel)
        watch.check(force=True)
        paths = [str(p) for p in paths]
        labels = np.asarray(labels, dtype=np.int64)
        if len(paths) != len(labels) or not len(paths):
            raise DatasetError("Fine-tuning needs photos with one label each.")
        self.classes = [str(c) for c in classes]
        n_classes = len(self.classes)
        device = self._device()
        self.device_ = str(device)
        threads = self.num_threads or available_cpus()
        if device.type == "cpu":
            torch.set_num_threads(threads)  # restored when fit returns
        else:
            torch.backends.cudnn.benchmark = True
        self.threads_ = threads
        amp_dtype = self._amp_dtype(device)
        torch.manual_seed(self.seed)

        fit_i, val_i, self.validation_note_ = self._carve_validation(labels)
        self.train_paths_ = [paths[i] for i in fit_i]
        self.val_paths_ = [paths[i] for i in val_i]
        y_val = labels[val_i]

        if progress:
            progress(TrainProgress("load", 0, None, "steps", message=f"loading {self.backbone}"))
        self.data_config_ = eval_data_config(self.backbone)
        pixels = _Pixels(self.data_config_)
        model = create_model(self.backbone, num_classes=n_classes).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model_ = model
        groups, head_names = _layer_groups(model)
        hooks = self._install_cancel_hooks(model, watch)

        phases = [(p, n) for p, n in (("head", self.head_epochs), ("full", self.epochs)) if n > 0]
        n_fit = len(fit_i)
        bs = min(self.batch_size, n_fit)
        drop_last = n_fit >= 2 * bs
        steps = n_fit // bs if drop_last else math.ceil(n_fit / bs)
        planned = {p: n for p, n in phases}
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

        self.curve = []
        best_key, best_state, since_best = None, None, 0
        epoch_no, images_done = 0, 0
        step_seconds = {"head": 0.0, "full": 0.0}
        images_phase = {"head": 0, "full": 0}
        val_seconds = 0.0
        stop_reason = "finished the planned epochs"
        last_val_acc = None
        budget = self.budget_seconds

        def over_budget() -> bool:  # checked between steps; at least one step is always taken
            return budget is not None and images_done > 0 and time.perf_counter() - start >= budget

        def rate(phase: str) -> Optional[float]:
            if images_phase[phase] and step_seconds[phase] > 0:
                return images_phase[phase] / step_seconds[phase]
            if phase == "full" and images_phase["head"] and step_seconds["head"] > 0:
                # Until measured: a full step costs about five head-only steps (tf_efficientnet_lite0 on a CPU).
                return images_phase["head"] / step_seconds["head"] / 5
            return None

        def eta(phase: str, epoch_in_phase: int, step: int) -> Optional[float]:
            left, later = 0.0, False
            for p, _ in phases:
                if p == phase:
                    later = True
                    imgs = ((planned[p] - epoch_in_phase) * steps + steps - step) * bs
                    vals = planned[p] - epoch_in_phase + (1 if step < steps else 0)
                elif later:
                    imgs, vals = planned[p] * steps * bs, planned[p]
                else:
                    continue
                r = rate(p)
                if r is None:
                    return None
                left += imgs / r + vals * (val_seconds / max(1, epoch_no) if len(val_i) else 0.0)
            if budget is not None:
                left = min(left, max(0.0, budget - (time.perf_counter() - start)))
            return left

        try:
            stopped = False
            for phase, _ in phases:
                if stopped:
                    break
                params = self._configure_trainable(model, phase, groups, head_names)
                optimizer = torch.optim.AdamW(params, lr=self.head_lr if phase == "head" else self.lr,
                                              weight_decay=self.weight_decay)
                peak = self.head_lr if phase == "head" else self.lr
                phase_step = 0
                e = 0
                while e < planned[phase]:
                    if over_budget():
                        stop_reason, stopped = "reached the time budget", True
                        break
                    e += 1
                    epoch_no += 1
                    epoch_start = time.perf_counter()
                    self._set_modes(model)
                    rng = np.random.default_rng([self.seed, epoch_no])
                    order = fit_i[rng.permutation(n_fit)]
                    if drop_last:
                        order = order[:steps * bs]
                    loss_sum, correct, seen, partial = 0.0, 0, 0, False
                    lr = peak

                    def load_train(i: int, _epoch=epoch_no) -> np.ndarray:
                        r = np.random.default_rng([self.seed, _epoch, int(i)])
                        return pixels.train_pixels(paths[i], r, self.crop_scale, self.flips)

                    if progress:
                        progress(TrainProgress(
                            "train", images_done, max(images_done, sum(planned.values()) * steps * bs), "images",
                            rate(phase), eta(phase, e, 0), time.perf_counter() - start,
                            f"epoch {epoch_no}/{sum(planned.values())} ({_PHASE_WORDS[phase]}) starting",
                            epoch_no, sum(planned.values()), phase, 0, steps, None, last_val_acc))

                    for step, (idx, px) in enumerate(_batches(load_train, order, bs, self.decode_workers,
                                                              pixels.size)):
                        watch.check(force=True)
                        if over_budget():
                            stop_reason, stopped, partial = "reached the time budget", True, True
                            break
                        t0 = time.perf_counter()
                        total_steps = planned[phase] * steps
                        lr = _lr_at(phase_step, total_steps, peak, self.warmup_fraction, self.min_lr_ratio)
                        for g in optimizer.param_groups:
                            g["lr"] = lr
                        x = pixels.to_tensor(px, device, self.channels_last)
                        y = torch.as_tensor(labels[idx], device=device)
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            logits = model(x)
                        loss = criterion(logits.float(), y)
                        optimizer.zero_grad(set_to_none=True)
                        if scaler is not None:
                            scaler.scale(loss).backward()
                            scaler.step(optimizer)
                            scaler.update()
                        else:
                            loss.backward()
                            optimizer.step()
                        loss_value = float(loss.detach())
                        if not math.isfinite(loss_value):
                            raise ToptuneError(f"Fine-tuning diverged (the loss became {loss_value}) in epoch "
                                               f"{epoch_no}; try a lower learning rate.")
                        phase_step += 1
                        n = len(idx)
                        loss_sum += loss_value * n
                        correct += int((logits.detach().argmax(1) == y).sum())
                        seen += n
                        images_done += n
                        images_phase[phase] += n
                        step_seconds[phase] += time.perf_counter() - t0
                        if step == 0:
                            after_first_step = time.perf_counter()
                        elif phase == "full" and e == 1 and step == 3:
                            # Early estimate of a full epoch from steps 2-4 (the first step of a phase also
                            # builds the kernels, so it is not typical), to fit the cosine into the budget.
                            per_step = (time.perf_counter() - after_first_step) / 3
                            first = after_first_step - epoch_start
                            self._replan(planned, phase, e, per_step * steps
                                         + (val_seconds / max(1, epoch_no - 1) if len(val_i) else 0.0),
                                         start, epoch_start + max(0.0, first - per_step))
                        if progress:
                            total_images = sum(planned[p] for p, _ in phases) * steps * bs
                            elapsed = time.perf_counter() - start
                            r = rate(phase)
                            progress(TrainProgress(
                                "train", images_done, max(total_images, images_done), "images", r,
                                eta(phase, e, step + 1), elapsed,
                                f"epoch {epoch_no}/{sum(planned.values())} ({_PHASE_WORDS[phase]}), "
                                f"step {step + 1}/{steps}, loss {loss_sum / seen:.3f}",
                                epoch_no, sum(planned.values()), phase, step + 1, steps, loss_sum / seen,
                                last_val_acc))
                    if seen == 0:
                        epoch_no -= 1
                        break
                    # --- end of epoch: validate, record, keep the best
                    t_val = time.perf_counter()
                    val_acc = val_loss = None
                    if len(val_i):
                        if progress:
                            progress(TrainProgress("validate", 0, len(val_i), "images",
                                                   elapsed=time.perf_counter() - start,
                                                   message=f"epoch {epoch_no}: scoring the validation photos",
                                                   epoch=epoch_no, epochs=sum(planned.values()), phase=phase))
                        proba = self._proba(model, [paths[i] for i in val_i], pixels, device, amp_dtype, watch)
                        val_acc = float((proba.argmax(1) == y_val).mean())
                        val_loss = float(-np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
                        last_val_acc = val_acc
                    val_seconds += time.perf_counter() - t_val
                    epoch_seconds = time.perf_counter() - epoch_start
                    key = (val_acc, -val_loss) if val_acc is not None else None
                    is_best = key is not None and (best_key is None or key > best_key)
                    if is_best:
                        best_key, since_best = key, 0
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                        self.best_epoch_ = epoch_no
                    elif key is not None and phase == "full":
                        since_best += 1
                    entry = {"epoch": epoch_no, "phase": phase, "train_loss": loss_sum / seen,
                             "train_accuracy": correct / seen, "val_loss": val_loss, "val_accuracy": val_acc,
                             "lr": lr, "elapsed": time.perf_counter() - start, "epoch_seconds": epoch_seconds,
                             "images_per_second": seen / max(1e-9, epoch_seconds - (time.perf_counter() - t_val)),
                             "best": is_best, "partial": partial}
                    self.curve.append(entry)
                    if on_epoch:
                        on_epoch(dict(entry))
                    if progress:
                        progress(TrainProgress(
                            "train", images_done, max(images_done, sum(planned.values()) * steps * bs), "images",
                            rate(phase), eta(phase, e, steps), time.perf_counter() - start,
                            f"epoch {epoch_no} done: loss {entry['train_loss']:.3f}"
                            + (f", validation accuracy {val_acc:.3f}" if val_acc is not None else ""),
                            epoch_no, sum(planned.values()), phase, steps, steps, entry["train_loss"], val_acc,
                            epoch_end=True))
                    if stopped:
                        break
                    if phase == "full" and since_best >= self.patience:
                        stop_reason, stopped = f"early stopping (no better validation score in {self.patience} " \
                                               "epochs)", True
                        break
                    steps_done = step + 1 if not partial else step
                    typical = epoch_seconds
                    if steps_done > 1:  # leave out the first step's one-off cost (kernel set-up)
                        typical = (t_val - after_first_step) / (steps_done - 1) * steps + (time.perf_counter() - t_val)
                    self._replan(planned, phase, e, typical, start, None)
        finally:
            for h in hooks:
                h.remove()
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            self.best_epoch_ = epoch_no
        model.eval()
        self.epochs_run_ = epoch_no
        self.stop_reason_ = stop_reason
        self.train_seconds_ = time.perf_counter() - start
        self.images_per_second_ = images_done / max(1e-9, sum(step_seconds.values())) if images_done else None
        self.images_per_second_by_phase_ = {p: images_phase[p] / step_seconds[p] for p in step_seconds
                                            if step_seconds[p] > 0}
        return self

    def _replan(self, planned: dict, phase: str, epoch_in_phase: int, epoch_seconds: float, start: float,
                epoch_start: Optional[float]) -> None:
        """Shrink this phase's planned epochs when they cannot finish inside the budget (the cosine follows)."""
        if self.budget_seconds is None or epoch_seconds <= 0:
            return
        now = time.perf_counter()
        if epoch_start is not None:  # mid-epoch estimate: the current epoch counts from its start
            left = self.budget_seconds - (epoch_start - start)
            fit_epochs = max(1, int(left // epoch_seconds))
            planned[phase] = min(planned[phase], epoch_in_phase - 1 + fit_epochs)
        else:
            left = self.budget_seconds - (now - start)
            fit_epochs = int(left // epoch_seconds)
            planned[phase] = min(planned[phase], epoch_in_phase + max(0, fit_epochs))

    def _configure_trainable(self, model, phase: str, groups: list[list[str]], head_names: list[str]) -> list:
        """Set requires_grad for the phase; return AdamW parameter groups (no decay on biases and norms)."""
        if phase == "head":
            trainable = set(head_names)
        elif self.freeze_blocks is None:
            trainable = {n for n, _ in model.named_parameters()}
        else:
            last = groups[max(0, len(groups) - self.freeze_blocks):] if self.freeze_blocks else []
            trainable = set(head_names) | {n for g in last for n in g}
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)
            if name in trainable:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @staticmethod
    def _set_modes(model) -> None:
        """Train mode, except batch norms whose parameters are frozen: they keep their ImageNet statistics."""
        import torch

        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    m.eval()

    @staticmethod
    def _install_cancel_hooks(model, watch: _CancelWatch) -> list:
        """Cancel checks inside the forward pass (each block) and the backward pass (each block's output grad)."""
        if watch.should_cancel is None:
            return []
        import torch

        blocks = getattr(model, "blocks", None)
        modules = [b for stage in blocks for b in (stage if isinstance(stage, torch.nn.Sequential) else [stage])] \
            if isinstance(blocks, torch.nn.Sequential) else [m for _, m in model.named_children()]

        def grad_hook(grad):
            watch.check()
            return None

        def forward_hook(module, inputs, output):
            watch.check()
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(grad_hook)

        return [m.register_forward_hook(forward_hook) for m in modules]

    # --- predicting ---------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.model_ is None:
            raise ToptuneError("This fine-tuner has not been trained yet.")

    def _proba(self, model, paths: Sequence[ImageSource], pixels: _Pixels, device, amp_dtype,
               watch: Optional[_CancelWatch] = None, batch_size: Optional[int] = None,
               meter: Optional[ProgressMeter] = None) -> np.ndarray:
        import torch

        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.inference_mode():
                done = 0
                for idx, px in _batches(lambda i: pixels.eval_pixels(paths[i]), list(range(len(paths))),
                                        batch_size or max(1, 2 * self.batch_size), self.decode_workers, pixels.size):
                    if watch is not None:
                        watch.check(force=True)
                    x = pixels.to_tensor(px, device, self.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = model(x)
                    out.append(torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64))
                    done += len(idx)
                    if meter is not None:
                        meter.update(done)
        finally:
            model.train(was_training)
        n = len(self.classes) if self.classes else 0
        return np.concatenate(out) if out else np.zeros((0, n))

    def predict_proba(self, paths: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
                      should_cancel: Optional[CancelCheck] = None) -> np.ndarray:
        """(n, n_classes) class probabilities; photos go through timm's evaluation transform."""
        self._check_fitted()
        device = next(self.model_.parameters()).device
        meter = ProgressMeter("evaluate", len(paths), progress, "images", should_cancel) if progress else None
        return self._proba(self.model_, list(paths), _Pixels(self.data_config_), device, self._amp_dtype(device),
                           _CancelWatch(should_cancel), meter=meter)

    def predict(self, paths: Sequence[ImageSource]) -> np.ndarray:
        """Predicted class indices."""
        return self.predict_proba(paths).argmax(axis=1)

    def predict_proba_image(self, source: ImageSource) -> np.ndarray:
        """Class probabilities for one photo (path, bytes or file object); ImageError if it cannot be read."""
        import torch

        self._check_fitted()
        if self._pixels is None:
            self._pixels = _Pixels(self.data_config_)
        device = next(self.model_.parameters()).device
        x = self._pixels.to_tensor(self._pixels.eval_pixels(source)[None], device, self.channels_last)
        amp = self._amp_dtype(device)
        self.model_.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = self.model_(x)
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy().astype(np.float64)

    _pixels: Optional[_Pixels] = None

    # --- saving -------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write the weights (safetensors) and the configuration (JSON) into ``folder``, each atomically."""
        from safetensors.torch import save_file

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"backbone": self.backbone, "classes": self.classes, "data_config": self.data_config_,
                  "params": _jsonable(self.get_params()), "best_epoch": getattr(self, "best_epoch_", None)}
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, folder / CONFIG_FILE)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model_.state_dict().items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"backbone": self.backbone, "classes": json.dumps(self.classes)})
        os.replace(tmp, folder / WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: str | Path, *, device: Optional[str] = None) -> "FineTuner":
        """A fine-tuner saved by ``save``: the backbone with its new head, weights loaded strictly."""
        import torch
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ToptuneError(f"The fine-tuned model in '{folder}' cannot be read ({e}).") from None
        if not (folder / WEIGHTS_FILE).exists():
            raise ToptuneError(f"The fine-tuned weights are missing from '{folder}'.")
        known = set(FINETUNE_DEFAULTS)
        params = {k: v for k, v in config.get("params", {}).items() if k in known}
        params["crop_scale"] = tuple(params.get("crop_scale", FINETUNE_DEFAULTS["crop_scale"]))
        params["device"] = device
        tuner = cls(**params)
        tuner.classes = list(config["classes"])
        tuner.data_config_ = config["data_config"]
        tuner.best_epoch_ = config.get("best_epoch")
        model = create_model(config["backbone"], num_classes=len(tuner.classes), pretrained=False)
        state = load_file(str(folder / WEIGHTS_FILE))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ToptuneError(f"The fine-tuned weights in '{folder}' do not match {config['backbone']} "
                               f"({str(e).splitlines()[0]}).") from None
        model = model.to(tuner._device())
        if tuner.channels_last:
            model = model.to(memory_format=torch.channels_last)
        tuner.model_ = model.eval()
        return tuner


_PHASE_WORDS = {"head": "head only", "full": "fine-tuning"}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


# --- the recorded pipeline -----------------------------------------------------------------------

def _relpath(path: str, roots: Sequence[Path]) -> str:
    p = Path(path)
    for root in roots:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(p)


def run_finetuning(data: str | Path, *, test_data: Optional[str | Path] = None, backbone: str = DEFAULT_BACKBONE,
                   seed: int = 0, test_size: float = 0.25, store: Optional[RunStore] = None,
                   progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
                   run_id: Optional[str] = None, **hyper: Any) -> RunRecord:
    """Fine-tune ``backbone`` on ``data`` with the top-tuning split; returns the recorded run (method 'finetune').

    The run is recorded as ``running`` first; its curve is updated after every
    epoch; it ends ``completed`` (metrics on the held-out photos, per-image
    predictions, weights), or ``cancelled`` / ``failed`` with the curve so far.
    ``run_id``: continue a run already recorded (``FinetuneJob`` records it
    before starting the training process). ``hyper``: any ``FINETUNE_DEFAULTS`` setting.
    """
    from toptune_core.data.split import load_data, split_for

    start = time.perf_counter()
    store = store or RunStore()
    run = store.get(run_id) if run_id else None
    curve: list[dict] = []
    try:
        settable = [k for k in FINETUNE_DEFAULTS if k not in ("backbone", "seed")]
        unknown = sorted(set(hyper) - set(settable))
        if unknown:
            raise ToptuneError(f"Unknown fine-tune setting(s): {', '.join(unknown)}. Known: {', '.join(settable)}.")
        tuner = FineTuner(backbone=backbone, seed=seed, **hyper).check_params()
        dataset, test_dataset = load_data(data, test_data)
    except BaseException as e:
        if run is not None:
            store.finish(run.id, "failed", str(e) or type(e).__name__)
        raise
    data_config = eval_data_config(backbone)
    params = {"data": str(dataset.root), "test_data": str(test_dataset.root) if test_dataset else None,
              "seed": seed, "test_size": test_size, "classes": dataset.classes, "data_config": data_config,
              "n_images": len(dataset) + (len(test_dataset) if test_dataset else 0),
              "hyper": _jsonable(tuner.get_params()), "recipe": FINETUNE_RECIPE}
    if run is None:
        run = store.start(method="finetune", backbone=backbone, dataset=str(dataset.root), params=params)
    else:
        store.update(run.id, params=params, dataset=str(dataset.root), backbone=backbone)
    try:
        check_cancel(should_cancel, "Fine-tuning")
        t0 = time.perf_counter()
        ok_train, err_train = readable_photos(dataset.paths, data_config, progress=progress,
                                              should_cancel=should_cancel)
        ok_test, err_test = (readable_photos(test_dataset.paths, data_config, progress=progress,
                                             should_cancel=should_cancel) if test_dataset else (None, []))
        check_seconds = time.perf_counter() - t0
        if not ok_train.any():
            raise ToptuneError(f"None of the {len(dataset)} photos could be read; the first problem: "
                               f"{err_train[0][1] if err_train else 'unknown'}")
        labels, paths, split = split_for(dataset, test_dataset, ok_train, ok_test, seed=seed, test_size=test_size)
        paths = [str(p) for p in paths]
        unreadable = [[dataset.relpaths[i], r] for i, r in err_train]
        if test_dataset is not None:
            unreadable += [[test_dataset.relpaths[i], r] for i, r in err_test]
        train_idx, test_idx = split.train_idx, split.test_idx

        def on_epoch(entry: dict) -> None:
            curve.append(entry)
            store.update(run.id, curve=curve)

        tuner.fit([paths[i] for i in train_idx], labels[train_idx], dataset.classes, progress=progress,
                  should_cancel=should_cancel, on_epoch=on_epoch)
        t0 = time.perf_counter()
        test_paths = [paths[i] for i in test_idx]
        proba = tuner.predict_proba(test_paths, progress=progress, should_cancel=should_cancel)
        predict_seconds = time.perf_counter() - t0
        result = evaluate(labels[test_idx], proba, dataset.classes, test_paths)
        check_cancel(should_cancel, "Fine-tuning")
        tuner.save(store.run_dir(run.id))
        train_seconds = tuner.train_seconds_
        timings = {
            "cache_hit": None,
            "extract_seconds": 0.0,  # a fine-tune extracts no features
            "feature_extraction_seconds": 0.0,
            "check_seconds": check_seconds,  # reading every photo once to find unreadable ones
            "fit_seconds": train_seconds,
            "train_seconds": train_seconds,
            "train_seconds_without_extraction": train_seconds,
            "train_seconds_with_extraction": train_seconds,
            "predict_seconds": predict_seconds,
            "total_seconds": time.perf_counter() - start,
            "epochs_run": tuner.epochs_run_,
            "best_epoch": tuner.best_epoch_,
            "stop_reason": tuner.stop_reason_,
            "images_per_second": tuner.images_per_second_,
            "images_per_second_by_phase": tuner.images_per_second_by_phase_,
            "device": tuner.device_,
            "threads": tuner.threads_,
        }
        roots = [dataset.root] + ([test_dataset.root] if test_dataset else [])
        split_record = {**split.describe(), "n_train": int(len(train_idx)), "n_val": len(tuner.val_paths_),
                        "validation": tuner.validation_note_,
                        "test_files": test_paths, "val_files": [_relpath(p, roots) for p in tuner.val_paths_],
                        "unreadable": unreadable}
        return store.complete(run.id, metrics=result.metrics, timings=timings, split=split_record,
                              predictions=result.predictions, curve=curve)
    except Cancelled as e:
        store.finish(run.id, "cancelled", str(e), curve=curve)
        raise
    except KeyboardInterrupt:
        store.finish(run.id, "cancelled", "Fine-tuning was interrupted from the keyboard.", curve=curve)
        raise
    except JobInterrupted as e:
        store.finish(run.id, "interrupted", str(e), curve=curve)
        raise
    except BaseException as e:
        store.finish(run.id, "failed", str(e) or type(e).__name__, curve=curve)
        raise


def load_finetuned(store: RunStore, run: RunRecord, *, device: Optional[str] = None) -> FineTuner:
    """The fine-tuned model of a completed run, from that run's own folder in the store."""
    folder = store.run_dir(run.id).resolve()
    if store.runs_dir.resolve() not in folder.parents:
        raise ToptuneError(f"Refusing to load a model from outside the data folder: {folder}")
    if run.method != "finetune":
        raise ToptuneError(f"Run {run.id} is a {run.method} run, not a fine-tune.")
    if not (folder / WEIGHTS_FILE).exists():
        raise ToptuneError(f"Run {run.id} has no saved fine-tuned weights (status: {run.status}); "
                           "choose a completed fine-tune.")
    return FineTuner.load(folder, device=device)
