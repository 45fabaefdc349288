"""The one pixel pipeline: photo -> 8-bit pixels at the model's input size -> normalised input.

Both methods, and prediction, see a photo through this module, so they see the
same pixels. Everything derives from timm's resolved data config
(``eval_data_config``): the evaluation pixels are timm's evaluation transform
(resize the shorter side, centre crop) done by Pillow and NumPy alone
(``eval_resize_crop``, checked against timm's transform by the tests), so a
prediction needs neither torch nor torchvision; the training pixels (fine-tune
only) are a random resized crop at the input size with flips. ``normalise``
(NumPy) and ``to_tensor`` (torch, for the torch engine and the GPU) do timm's
ToTensor + Normalize arithmetic, operator for operator, on a whole batch, so
the result is bitwise the plain transform's. Decoding (``load_rgb``) runs only
Pillow and NumPy, never a torch operator, so it can run in background threads.

A photo is *readable* when ``load_rgb`` at the resize side succeeds; that one
rule decides which photos every method trains and tests on.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import get_backbone
from toptune_core.config import Settings
from toptune_core.data.images import ImageSource, load_rgb
from toptune_core.errors import ImageError, ToptuneError

if TYPE_CHECKING:
    import torch


def timm_version() -> str:
    return importlib.metadata.version("timm")


#: Input sides (pixels) a backbone may be run at besides its own (``eval_data_config``'s ``resolution``).
RESOLUTIONS = (224, 256, 288, 320)
_RESOLUTION_RANGE = (64, 1024)


def check_resolution(resolution: Optional[int]) -> Optional[int]:
    """``resolution`` as an int (None stays None: the backbone's own input size), or a one-line error."""
    if resolution is None:
        return None
    try:
        value = int(resolution)
        if value != float(resolution):
            raise ValueError
    except (TypeError, ValueError):
        raise ToptuneError(f"The input resolution must be a whole number of pixels (got '{resolution}').") from None
    low, high = _RESOLUTION_RANGE
    if not low <= value <= high:
        raise ToptuneError(f"The input resolution must be between {low} and {high} pixels (got {value}).")
    return value


def eval_data_config(backbone: str, settings: Optional[Settings] = None, resolution: Optional[int] = None) -> dict:
    """timm's resolved evaluation preprocessing for ``backbone``, without building the model; ``resolution``
    (pixels): run the backbone at this square input size instead of its own (the resize before the crop
    scales with it, by the same crop_pct).

    Remembered on disk per timm version, so that a run whose features are cached
    need not import timm (and torch) at all.
    """
    resolution = check_resolution(resolution)
    cfg = _timm_data_config(backbone, settings or Settings.from_env())
    if resolution is not None:
        cfg = {**cfg, "input_size": [3, resolution, resolution]}
    return cfg


def _timm_data_config(backbone: str, settings: Settings) -> dict:
    remembered = settings.data_configs_dir / f"{backbone}--timm-{timm_version()}.json"
    try:
        return json.loads(remembered.read_text())
    except (OSError, ValueError):
        pass
    import timm
    import timm.data

    spec = get_backbone(backbone)
    pretrained_cfg = timm.models.get_pretrained_cfg(spec.name)
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)
    if not pretrained_cfg:
        cfg["input_size"] = (3, spec.input_size, spec.input_size)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    tmp = remembered.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp")
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, remembered)
    except OSError:  # remembering is only a shortcut: a full disk or read-only folder must not stop the work
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return cfg


def eval_transform(cfg: dict):
    """timm's evaluation transform for a data config: resize, centre crop, to tensor, normalise. No augmentation."""
    import timm.data

    return timm.data.create_transform(input_size=tuple(cfg["input_size"]), interpolation=cfg["interpolation"],
                                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=cfg["crop_pct"],
                                      crop_mode=cfg.get("crop_mode", "center"), is_training=False)


def resize_side(cfg: dict) -> int:
    """The shorter-side length the eval transform resizes to before cropping."""
    return math.floor(cfg["input_size"][-1] / cfg["crop_pct"])


def native_eval_supported(cfg: dict) -> bool:
    """True when ``eval_resize_crop`` reproduces timm's eval transform for ``cfg``: a square input, centre
    crop mode, crop_pct <= 1 (so the crop never pads) and a Pillow resampling filter."""
    size = cfg["input_size"]
    return (size[-1] == size[-2] and cfg.get("crop_mode", "center") in (None, "center")
            and 0 < float(cfg.get("crop_pct") or 0) <= 1 and str(cfg.get("interpolation")) in _RESAMPLE_NAMES)


def eval_resize_crop(im, cfg: dict) -> np.ndarray:
    """(H, W, 3) uint8: timm's eval resize and centre crop of a Pillow RGB image, by Pillow and NumPy alone.

    torchvision's ``Resize(side)`` (the shorter side to ``resize_side``, the longer
    one ``int(side * long / short)``, no resize when the size already matches)
    then ``CenterCrop`` (offsets ``int(round((size - crop) / 2))``); both call
    the same Pillow operations, so the pixels are bitwise timm's.
    """
    size, side = int(cfg["input_size"][-1]), resize_side(cfg)
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = side, int(side * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), _RESAMPLE[str(cfg["interpolation"])])
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalise(pixels: np.ndarray, cfg: dict) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32: timm's ToTensor + Normalize arithmetic in NumPy
    (x / 255, then (x - mean) / std, in float32), bitwise the torch result."""
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32)
    x /= np.float32(255)
    x -= np.asarray(cfg["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(cfg["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return x


def unreadable_reason(source: ImageSource, e: Exception) -> str:
    """The one-line reason a photo counts as unreadable (any decoder failure does)."""
    if isinstance(e, ImageError):
        return str(e)
    return f"'{Path(str(source)).name}' could not be read ({type(e).__name__}: {e})."


@dataclass
class PixelBatch:
    """Decoded, resized and cropped photos of one batch as 8-bit pixels, ready for the model."""

    indices: Sequence[int]  # positions of the batch's photos in the sources
    pixels: np.ndarray  # (n_ok, H, W, 3) uint8, readable photos only, in order
    ok: list[bool]  # per photo of the batch
    errors: list[tuple[int, str]]  # (index in sources, reason)
    features: Optional[np.ndarray] = None  # (n_ok, dim) once a model has run


class PixelPipeline:
    """Photos -> 8-bit pixels -> normalised tensors, for one data config.

    ``draft``: a JPEG at least twice the resize side is decoded at a
    power-of-two reduction that keeps its shorter side at or above the resize
    side, so the resize that follows only ever shrinks (the crop differs from a
    full decode's by resampling error only).
    """

    def __init__(self, data_config: dict, *, draft: bool = True):
        self.cfg = data_config
        self.draft = draft
        self.size = int(data_config["input_size"][-1])
        self.min_size = resize_side(data_config)
        self.native = native_eval_supported(data_config)
        self._steps = None

    def _split(self):
        """(Pillow steps, mean, std) of timm's eval transform, or None if it has a step this path cannot copy."""
        if self._steps is None:
            from torchvision import transforms as T

            steps = list(getattr(eval_transform(self.cfg), "transforms", []))
            names = [type(t).__name__ for t in steps]
            split = None
            if len(steps) >= 2 and names[-2] in ("ToTensor", "MaybeToTensor") and names[-1] == "Normalize" \
                    and not any(n in ("ToTensor", "MaybeToTensor", "Normalize") for n in names[:-2]):
                norm = steps[-1]
                split = (T.Compose(steps[:-2]), [float(v) for v in norm.mean], [float(v) for v in norm.std])
            self._steps = split or False
        return self._steps or None

    @property
    def has_pixel_stage(self) -> bool:
        return self.native or self._split() is not None

    def require_pixel_stage(self) -> None:
        if not self.has_pixel_stage:
            raise ToptuneError("The evaluation transform of this backbone is not supported here (it has no 8-bit "
                               "pixel stage).")

    def decode(self, source: ImageSource):
        """The photo upright in RGB, draft-decoded when ``draft`` (Pillow only). ImageError if unreadable."""
        return load_rgb(source, min_size=self.min_size if self.draft else None)

    def eval_pixels(self, source: ImageSource) -> np.ndarray:
        """(H, W, 3) uint8: timm's eval resize and centre crop of the photo (Pillow and NumPy only when the
        config allows, else timm's own Pillow steps)."""
        if self.native:
            return eval_resize_crop(self.decode(source), self.cfg)
        self.require_pixel_stage()
        return np.array(self._split()[0](self.decode(source)), dtype=np.uint8)

    def train_pixels(self, source: ImageSource, rng: np.random.Generator, scale: Sequence[float],
                     flips: bool) -> np.ndarray:
        """(H, W, 3) uint8: a random resized crop (torchvision's sampling rule, drawn from ``rng``) and flips."""
        from PIL import Image

        im = self.decode(source)
        top, left, h, w = random_resized_crop_box(im.width, im.height, rng, scale, (3 / 4, 4 / 3))
        im = im.resize((self.size, self.size), _RESAMPLE.get(str(self.cfg.get("interpolation")), Image.BICUBIC),
                       box=(left, top, left + w, top + h))
        if flips:
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_TOP_BOTTOM)
        return np.array(im, dtype=np.uint8)

    def readable(self, source: ImageSource) -> Optional[str]:
        """None if the photo can be read (the rule every method uses), else the one-line reason."""
        try:
            self.decode(source)
            return None
        except Exception as e:
            return unreadable_reason(source, e)

    def load_batch(self, sources: Sequence[ImageSource], indices: Sequence[int], load=None) -> PixelBatch:
        """Decode one batch (Pillow and NumPy only); ``load(i)`` defaults to ``eval_pixels(sources[i])``.
        Unreadable photos are reported, not fatal."""
        load = load or (lambda i: self.eval_pixels(sources[i]))
        pixels = np.empty((len(indices), self.size, self.size, 3), dtype=np.uint8)
        ok, errors, n_ok = [], [], 0
        for i in indices:
            try:
                arr = load(i)
                if arr.shape != pixels.shape[1:]:
                    raise ValueError(f"preprocessing gave {arr.shape}, not {pixels.shape[1:]}")
                pixels[n_ok] = arr
                n_ok += 1
                ok.append(True)
            except Exception as e:  # a decoder bug must not kill a whole dataset run
                ok.append(False)
                errors.append((i, unreadable_reason(sources[i], e)))
        return PixelBatch(indices, pixels[:n_ok], ok, errors)

    def to_tensor(self, pixels: "np.ndarray | torch.Tensor", device: Optional["torch.device"] = None,
                  channels_last: bool = True) -> "torch.Tensor":
        """(N, H, W, 3) uint8 -> normalised float32 (N, 3, H, W) on ``device``.

        timm's ToTensor + Normalize arithmetic (x / 255, then (x - mean) / std
        in float32). On CUDA the 8 bits travel (pinned, asynchronously) and
        the arithmetic runs on the GPU.
        """
        import torch

        self.require_pixel_stage()
        mean, std = self.cfg["mean"], self.cfg["std"]
        x = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
        if device is not None and device.type == "cuda":
            if not x.is_pinned():
                x = x.pin_memory()
            x = x.to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # an NCHW view of NHWC memory: already channels-last
        if not channels_last:
            x = x.contiguous()
        x = x.to(torch.float32).div_(255)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean_t).div_(std_t)

    def plain_tensor(self, source: ImageSource) -> "torch.Tensor":
        """(3, H, W): timm's whole eval transform on the decoded photo (the path for transforms with no
        pixel stage, and the reference the fast path is tested against)."""
        return eval_transform(self.cfg)(self.decode(source))


def _resample_table() -> dict:
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}


_RESAMPLE = _resample_table()
_RESAMPLE_NAMES = frozenset(_RESAMPLE)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale: Sequence[float],
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
