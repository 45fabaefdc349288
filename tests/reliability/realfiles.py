"""Helpers of the reliability suite: real leaf photos re-encoded the awkward ways phones and users do, and a
command-line runner.

Every image fixture starts from a real bean-leaf photo of the shipped demo dataset; the only stored
binary is ``fixtures/leaf_healthy_0001.heic`` (that photo, 128x128, encoded by libheif/x265 through
pillow-heif 1.8.1, which this project does not install), because nothing here can write HEIC.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from toptune_core.config import DEMO_DATASET

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
HEIC_LEAF = FIXTURES / "leaf_healthy_0001.heic"
LEAF = DEMO_DATASET / "healthy" / "healthy_0001.jpg"
RUST_LEAF = sorted((DEMO_DATASET / "bean_rust").glob("*.jpg"))[0]


def leaf_rgb(path: Path = LEAF) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16bit_rgb(img: Image.Image) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG of ``img``, written by hand: Pillow cannot write one."""
    arr = np.asarray(img.convert("RGB")).astype(np.uint16) * 257
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, followed by one real row of data."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(b"\x00" + bytes(3 * min(width, 4096)))) \
        + _chunk(b"IEND", b"")


def jpeg_claiming(path: Path, width: int, height: int) -> bytes:
    """The real JPEG at ``path`` with its frame header (SOF) rewritten to claim ``width`` x ``height``."""
    data = bytearray(path.read_bytes())
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            data[at + 5:at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError(f"no frame header in {path}")


def write_big_png(path: Path, width: int, height: int, leaf: Image.Image) -> Path:
    """A genuine ``width`` x ``height`` RGB PNG: the leaf photo in the corner on a white page.

    It decodes to ``3 * width * height`` bytes but is written row by row and compresses
    to a few hundred kB, like a decompression bomb.
    """
    patch = np.asarray(leaf.convert("RGB"))
    white = bytes([255]) * (3 * width)
    comp = zlib.compressobj(6)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    idat = []
    for y in range(height):
        if y < patch.shape[0]:
            row = patch[y].tobytes() + white[patch.shape[1] * 3:]
        else:
            row = white
        idat.append(comp.compress(b"\x00" + row))
    idat.append(comp.flush())
    parts += [_chunk(b"IDAT", b"".join(idat)), _chunk(b"IEND", b"")]
    path.write_bytes(b"".join(parts))
    return path


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


# --- the command line -----------------------------------------------------------------------------------

def cli_env(home: Path) -> dict:
    env = dict(os.environ)
    env["TOPTUNE_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: list[str], home: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toptune_core", *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=timeout, cwd=REPO, **kw)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, no traceback, and the message is one ``error:`` line holding every fragment."""
    assert result.returncode not in (0, None), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("\r")]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
