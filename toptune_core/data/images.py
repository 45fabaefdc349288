"""Reading one photo safely: any common format, upright, RGB, within a pixel limit.

Phones produce EXIF-rotated JPEGs (sometimes MPO), PNGs with alpha, 16-bit or
CMYK files, HEIC photos and huge panoramas. ``load_rgb`` turns each readable
one into an upright 8-bit RGB image, or raises an ``ImageError`` whose one-line
message names the problem (empty file, text file, HEIC, truncated, too large...)
and says what to do.

Safety:

* Only the decoders in ``SUPPORTED_FORMATS`` are ever tried, so no upload can
  reach Pillow's rarely used plugins or an external program (EPS would run
  Ghostscript).
* The pixel count and the aspect ratio are checked from the header before any
  pixel is decoded, so a decompression bomb, a 100-megapixel scan or a
  20000x1 strip (which the model's resize would blow up) is refused without
  using memory.
* Only regular files are read: a FIFO or a device named ``x.jpg`` would block or
  never end.

A source may also be an object-store URL (``s3://...``): its bytes are read
through ``data.storage`` and decoded as any other bytes, so every caller that
opens a photo by its location reads it from whichever store holds it.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL import features as _pil_features

from toptune_core.data import storage
from toptune_core.errors import ImageError

# Register exactly the decoders used below (Image.open(formats=...) needs them loaded).
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, MpoImagePlugin, PngImagePlugin  # noqa: E402,F401
from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: E402,F401

_AVIF = bool(_pil_features.check("avif"))
if _AVIF:
    from PIL import AvifImagePlugin  # noqa: F401
#: Decoders that may be used (JPEG includes phones' multi-picture MPO files). Everything else is refused unread.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP") + (("AVIF",) if _AVIF else ())
#: File extensions treated as images when scanning a dataset folder.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
                             | ({".avif"} if _AVIF else set()))
#: Formats phones and cameras produce that cannot be read here.
UNSUPPORTED_EXTENSIONS = {".heic": "HEIC", ".heif": "HEIF", ".dng": "DNG (raw)", ".cr2": "CR2 (raw)",
                          ".cr3": "CR3 (raw)", ".nef": "NEF (raw)", ".arw": "ARW (raw)", ".orf": "ORF (raw)",
                          ".raf": "RAF (raw)", ".rw2": "RW2 (raw)", ".pdf": "PDF", ".svg": "SVG", ".eps": "EPS",
                          ".psd": "Photoshop (PSD)"}
if not _AVIF:
    UNSUPPORTED_EXTENSIONS[".avif"] = "AVIF"
#: Largest image accepted, in pixels (width x height). 64 MP is above any phone's default photo size.
MAX_PIXELS = 64_000_000
#: Longest side over shortest side. The model resizes the shorter side to ~256 px, so a 20000x1 strip
#: would become a multi-gigabyte image; real photos and panoramas stay well under this.
MAX_ASPECT_RATIO = 20

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and fails at twice that; we check
# the header ourselves with a clearer message, so keep Pillow's guard as a backstop only.
# Its warning is silenced rather than caught per call: ``warnings.catch_warnings`` is not
# thread-safe, and every image over MAX_PIXELS is refused by our own check anyway.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ImageSource = Union[str, Path, bytes, BinaryIO]

_SUPPORTED_WORDS = "JPEG, PNG, WebP, " + ("AVIF, " if _AVIF else "") + "GIF, BMP or TIFF"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension is one of IMAGE_EXTENSIONS."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _name(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name or str(source)
    name = getattr(source, "name", None)
    return Path(name).name if isinstance(name, str) and name else "the uploaded photo"


def _unsupported(name: str, kind: str) -> ImageError:
    return ImageError(f"'{name}' is in {kind} format, which is not supported; export it as JPEG or PNG and try again.")


def _head(source: ImageSource, n: int = 64) -> bytes:
    """The first ``n`` bytes of the source (best effort; b'' if it cannot be read)."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fh:
                return fh.read(n)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source[:n])
        pos = source.tell()
        source.seek(0)
        head = source.read(n)
        source.seek(pos)
        return head
    except Exception:
        return b""


def _describe_unreadable(name: str, head: bytes) -> ImageError:
    """An error that says what the file is, from its first bytes, when Pillow could not identify it."""
    if not head:
        return ImageError(f"'{name}' is empty (0 bytes); choose another photo.")
    if head[4:8] == b"ftyp":
        brands = {head[i:i + 4] for i in range(8, min(len(head), 32) - 3, 4)}
        if brands & _HEIF_BRANDS:
            return _unsupported(name, "HEIC/HEIF")
        if b"avif" in brands or b"avis" in brands:
            return _unsupported(name, "AVIF")
        return ImageError(f"'{name}' is not a readable image: it is a video or other MP4-family file. "
                          f"Use {_SUPPORTED_WORDS}.")
    if head.startswith(b"%PDF"):
        return _unsupported(name, "PDF")
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return _unsupported(name, "PostScript/EPS")
    if head.startswith(b"8BPS"):
        return _unsupported(name, "Photoshop (PSD)")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ImageError(f"'{name}' is not a readable image: it is a zip archive. Upload a zip of class folders "
                          "as a dataset instead.")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:5].lower() in (b"<?xml", b"<svg ", b"<svg>"):
        return _unsupported(name, "SVG/XML")
    if all(32 <= c < 127 or c in (9, 10, 13) for c in text[:64]):
        return ImageError(f"'{name}' is not a readable image: it is a text file (perhaps renamed). "
                          f"Use {_SUPPORTED_WORDS}.")
    return ImageError(f"'{name}' is not a readable image (unknown format or corrupt file). Use {_SUPPORTED_WORDS}.")


def _too_many_pixels(name: str, max_pixels: int, size: Optional[tuple[int, int]] = None) -> ImageError:
    dims = f" is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} megapixels);" if size else \
        " has more pixels than can be decoded safely (a decompression bomb or a huge scan);"
    return ImageError(f"'{name}'{dims} the limit is {max_pixels / 1e6:.0f} megapixels. Resize it and try again.")


def _check_path(path: Path, name: str) -> None:
    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED_EXTENSIONS:
        raise _unsupported(name, UNSUPPORTED_EXTENSIONS[suffix])
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"'{name}' does not exist.") from None
    except OSError as e:
        raise ImageError(f"'{name}' cannot be opened ({e.strerror or e}).") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"'{name}' is a folder, not a photo.")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"'{name}' is not a regular file (a device, pipe or socket); choose a photo file.")
    if st.st_size == 0:
        raise ImageError(f"'{name}' is empty (0 bytes); choose another photo.")


def load_rgb(source: ImageSource, *, min_size: Optional[int] = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a photo (path, bytes or binary file object) as an upright 8-bit RGB image.

    ``min_size``: the smallest side the caller will resize to. For JPEGs the
    decoder then works at the smallest power-of-two reduction that keeps the
    shorter side at least ``min_size`` pixels (Pillow's draft mode), which makes
    camera photos several times faster to read and changes the result only by
    resampling error.

    Raises ``ImageError`` (one line) for anything that is not a readable photo
    within ``max_pixels`` and ``MAX_ASPECT_RATIO``.
    """
    name = _name(source)
    if storage.is_url(source):
        source = storage.read_object(source)  # ImageError (one line) when the object cannot be read
    if isinstance(source, (str, Path)):
        _check_path(Path(source), name)
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                raise ImageError(f"'{name}' is empty (0 bytes); choose another photo.")
            source = io.BytesIO(source)
        suffix = Path(name).suffix.lower()
        if suffix in UNSUPPORTED_EXTENSIONS:
            raise _unsupported(name, UNSUPPORTED_EXTENSIONS[suffix])
    try:
        with Image.open(source, formats=SUPPORTED_FORMATS) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise _too_many_pixels(name, max_pixels, (width, height))
            if width < 1 or height < 1:
                raise ImageError(f"'{name}' has no pixels ({width}x{height}).")
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                raise ImageError(f"'{name}' is {width}x{height}, a strip too long and thin to classify "
                                 f"(over {MAX_ASPECT_RATIO}:1). Crop it to the leaf and try again.")
            if min_size and opened.format in ("JPEG", "MPO"):
                scale = min(width, height) / min_size
                if scale >= 2:
                    # draft() picks the largest reduction (1/2, 1/4, 1/8) that stays >= the requested size.
                    opened.draft("RGB", (int(np.ceil(width / scale)), int(np.ceil(height / scale))))
            try:
                upright = ImageOps.exif_transpose(opened)
            except (SyntaxError, ValueError, TypeError, KeyError, IndexError, ArithmeticError):
                upright = opened  # unreadable EXIF: the orientation is unknown, keep the pixels as stored
            upright.load()
            rgb = _to_rgb(upright)
            return rgb.copy() if rgb is opened else rgb  # ``opened`` is closed on leaving this block
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise _describe_unreadable(name, _head(source)) from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, max_pixels) from None
    except FileNotFoundError:
        raise ImageError(f"'{name}' does not exist.") from None
    except MemoryError:
        raise ImageError(f"'{name}' is too large to decode with the memory available; resize it and try again.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"'{name}' is truncated or corrupt and cannot be read ({_one_line(e)}).") from None
    except Exception as e:  # a decoder bug on hostile input must not escape as a traceback
        raise ImageError(f"'{name}' could not be decoded ({type(e).__name__}: {_one_line(e)}); "
                         "it is probably corrupt.") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
