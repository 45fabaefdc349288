"""Reading one photo safely: any common format, upright, RGB, within a pixel limit.

Phones produce EXIF-rotated JPEGs, PNGs with alpha, 16-bit or CMYK files, and
sometimes huge panoramas. ``load_rgb`` turns each into an upright 8-bit RGB
image or raises an ``ImageError`` whose message says what to do. Pixel counts
are checked from the header before any pixel is decoded, so a decompression
bomb is refused without using memory.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

#: File extensions treated as images when scanning a dataset folder.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Formats phones produce that Pillow cannot read without extra plugins.
UNSUPPORTED_EXTENSIONS = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".dng": "DNG (raw)", ".cr2": "CR2 (raw)", ".nef": "NEF (raw)"}
#: Largest image accepted, in pixels (width x height). 64 MP is above any phone's default photo size.
MAX_PIXELS = 64_000_000

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and fails at twice that; we check
# the header ourselves with a clearer message, so keep Pillow's guard as a backstop only.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 2

ImageSource = Union[str, Path, bytes, BinaryIO]


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension is one of IMAGE_EXTENSIONS."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _name(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return getattr(source, "name", None) or "the uploaded photo"


def load_rgb(source: ImageSource, *, min_size: Optional[int] = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a photo as an upright 8-bit RGB image.

    ``min_size``: the smallest side the caller will resize to. For JPEGs the
    decoder then works at the smallest power-of-two reduction that keeps the
    shorter side at least ``min_size`` pixels (Pillow's draft mode), which makes
    camera photos several times faster to read and changes the result only by
    resampling error.
    """
    name = _name(source)
    if isinstance(source, (str, Path)):
        suffix = Path(source).suffix.lower()
        if suffix in UNSUPPORTED_EXTENSIONS:
            raise ImageError(f"'{name}' is a {UNSUPPORTED_EXTENSIONS[suffix]} file, which is not supported; "
                             "export it as JPEG or PNG and try again.")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"'{name}' is empty (0 bytes); choose another photo.")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"'{name}' is {width}x{height} ({width * height / 1e6:.0f} megapixels); the limit is "
                                 f"{max_pixels / 1e6:.0f} megapixels. Resize it and try again.")
            if min_size and im.format == "JPEG":
                scale = min(width, height) / min_size
                if scale >= 2:
                    # draft() picks the largest reduction (1/2, 1/4, 1/8) that stays >= the requested size.
                    im.draft("RGB", (int(np.ceil(width / scale)), int(np.ceil(height / scale))))
            im = ImageOps.exif_transpose(im)
            im.load()
            return _to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"'{name}' does not exist.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise ImageError(f"'{name}' is not a readable image (unknown format or corrupt file).") from None
        raise ImageError(f"'{name}' is too large to decode safely; resize it and try again.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"'{name}' is truncated or corrupt and cannot be read ({e}).") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
