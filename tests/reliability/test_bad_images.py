"""Bad and awkward single photos: every one is either read upright as 8-bit RGB, or refused with one clear line.

All fixtures are real leaf photos from the demo dataset, re-encoded as a phone or a user would produce
them (alpha, palette, 16-bit, grayscale, CMYK, WebP, AVIF, MPO, HEIC, EXIF rotation...), damaged, or
rewritten to claim huge sizes. Oversized images are refused from the header: a subprocess measures that
refusing them costs no memory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from toptune_core.errors import ImageError
from toptune_core.data.images import MAX_PIXELS, load_rgb

from .realfiles import (HEIC_LEAF, LEAF, REPO, assert_one_line_error, encode, jpeg_claiming, leaf_rgb,
                       mean_abs_diff, png_16bit_rgb, png_claiming, run_cli, write_big_png)

ORIGINAL = leaf_rgb()
GRAY = ORIGINAL.convert("L").convert("RGB")


def _with_alpha() -> Image.Image:
    """The leaf with a fully transparent 32-pixel border and an opaque centre."""
    rgba = ORIGINAL.convert("RGBA")
    alpha = np.zeros(ORIGINAL.size[::-1], dtype=np.uint8)
    alpha[32:-32, 32:-32] = 255
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _expected_over_white() -> Image.Image:
    out = np.full((*ORIGINAL.size[::-1], 3), 255, dtype=np.uint8)
    out[32:-32, 32:-32] = np.asarray(ORIGINAL)[32:-32, 32:-32]
    return Image.fromarray(out)


def _palette_with_transparency() -> bytes:
    p = ORIGINAL.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    arr = np.asarray(p).copy()
    arr[:32, :] = 255  # palette index 255 is the transparent colour
    q = Image.fromarray(arr, "P")
    q.putpalette(p.getpalette()[:765] + [0, 0, 0])  # entry 255: black, but fully transparent
    return encode(q, "PNG", transparency=255)


def _gray16() -> bytes:
    return encode(Image.fromarray(np.asarray(ORIGINAL.convert("L")).astype(np.uint16) * 257), "PNG")


# name -> (encoded bytes, expected RGB image, largest mean absolute difference per channel in 0..255)
READABLE = {
    "png_rgba_transparent_border": (lambda: encode(_with_alpha(), "PNG"), _expected_over_white, 0.5),
    "png_palette": (lambda: encode(ORIGINAL.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), lambda: ORIGINAL, 4),
    "png_palette_transparent_rows": (_palette_with_transparency, lambda: Image.fromarray(
        np.concatenate([np.full((32, 256, 3), 255, np.uint8),
                        np.asarray(ORIGINAL.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
                                   .convert("RGB"))[32:]])), 2),
    "png_16bit_grayscale": (_gray16, lambda: GRAY, 0.6),
    "png_16bit_rgb": (lambda: png_16bit_rgb(ORIGINAL), lambda: ORIGINAL, 0.01),
    "png_grayscale": (lambda: encode(ORIGINAL.convert("L"), "PNG"), lambda: GRAY, 0.01),
    "png_grayscale_alpha": (lambda: encode(ORIGINAL.convert("LA"), "PNG"), lambda: GRAY, 0.01),
    "png_1bit": (lambda: encode(ORIGINAL.convert("1"), "PNG"), lambda: ORIGINAL.convert("1").convert("RGB"), 0.01),
    "jpeg_grayscale": (lambda: encode(ORIGINAL.convert("L"), "JPEG", quality=95), lambda: GRAY, 2),
    "jpeg_cmyk": (lambda: encode(ORIGINAL.convert("CMYK"), "JPEG", quality=95), lambda: ORIGINAL, 3),
    "jpeg_progressive": (lambda: encode(ORIGINAL, "JPEG", quality=95, progressive=True), lambda: ORIGINAL, 3),
    "mpo_two_pictures": (lambda: encode(ORIGINAL, "MPO", save_all=True, append_images=[GRAY], quality=95),
                         lambda: ORIGINAL, 3),
    "webp_lossy": (lambda: encode(ORIGINAL, "WEBP", quality=90), lambda: ORIGINAL, 4),
    "webp_lossless_alpha": (lambda: encode(_with_alpha(), "WEBP", lossless=True), _expected_over_white, 0.5),
    "avif": (lambda: encode(ORIGINAL, "AVIF", quality=90), lambda: ORIGINAL, 5),
    # 256 colours, dithered: the first frame (the leaf, not the gray second frame) within GIF's error
    "gif_animated": (lambda: encode(ORIGINAL, "GIF", save_all=True, append_images=[GRAY]), lambda: ORIGINAL, 20),
    "bmp": (lambda: encode(ORIGINAL, "BMP"), lambda: ORIGINAL, 0.01),
    "tiff_lzw": (lambda: encode(ORIGINAL, "TIFF", compression="tiff_lzw"), lambda: ORIGINAL, 0.01),
    "tiff_cmyk": (lambda: encode(ORIGINAL.convert("CMYK"), "TIFF"), lambda: ORIGINAL, 1),
    "tiff_float_grayscale": (lambda: encode(Image.fromarray(np.asarray(ORIGINAL.convert("L"), np.float32)), "TIFF"),
                             lambda: GRAY, 0.6),
}


@pytest.mark.parametrize("kind", sorted(READABLE))
def test_every_common_format_reads_as_rgb_like_the_original(kind: str) -> None:
    make, expected, tolerance = READABLE[kind]
    data = make()
    loaded = load_rgb(data)
    assert loaded.mode == "RGB" and loaded.size == ORIGINAL.size
    assert mean_abs_diff(loaded, expected()) <= tolerance
    # also through a named file object (what the dashboard's uploader hands over) and a file on disk
    named = io.BytesIO(data)
    named.name = f"{kind}.img"
    assert mean_abs_diff(load_rgb(named), loaded) == 0


def _orientation_fixture(orientation: int, fmt: str = "JPEG") -> bytes:
    """The leaf stored as a phone would store it for EXIF ``orientation`` (pixels turned, tag set)."""
    upright = ORIGINAL.crop((0, 0, 256, 192))  # not square, so a wrong turn also shows in the size
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(undo[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_rotated_phone_photos_are_read_upright(orientation: int) -> None:
    upright = ORIGINAL.crop((0, 0, 256, 192))
    data = _orientation_fixture(orientation)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.getexif()[0x0112] == orientation
        stored = raw.convert("RGB")
    loaded = load_rgb(data)
    assert loaded.size == (256, 192)
    assert mean_abs_diff(loaded, upright) < 2.5
    if stored.size == upright.size:  # the stored pixels really are turned: reading them as-is would be wrong
        assert mean_abs_diff(stored, upright) > 10


def test_exif_rotated_png_is_read_upright() -> None:
    loaded = load_rgb(_orientation_fixture(6, "PNG"))
    assert mean_abs_diff(loaded, ORIGINAL.crop((0, 0, 256, 192))) == 0


def test_exif_rotated_photo_is_classified_upright(trained, lite0_extractor) -> None:
    """What reaches the model is the upright photo: the same input tensor and the same prediction."""
    upright = encode(ORIGINAL.crop((0, 0, 256, 192)), "JPEG", quality=95)
    rotated = _orientation_fixture(6)
    with Image.open(io.BytesIO(rotated)) as raw:
        tag_stripped = encode(raw.convert("RGB"), "JPEG", quality=95)  # the same pixels without the EXIF tag
    x_up, x_rot, x_raw = (lite0_extractor.preprocess(d) for d in (upright, rotated, tag_stripped))
    assert x_up.shape == x_rot.shape
    assert float((x_up - x_rot).abs().mean()) < 0.03
    assert float((x_up - x_raw).abs().mean()) > 0.3
    p_up, p_rot = trained.predictor.predict(upright), trained.predictor.predict(rotated)
    assert p_rot.label == p_up.label
    np.testing.assert_allclose(p_rot.probabilities, p_up.probabilities, atol=0.05)


def test_corrupt_exif_does_not_block_the_photo() -> None:
    data = bytearray(_orientation_fixture(6))
    at = data.find(b"Exif\x00\x00")
    data[at + 6:at + 14] = b"QQ\x00\x2a\xff\xff\xff\xff"  # unknown byte order, offset far past the end
    loaded = load_rgb(bytes(data))
    assert loaded.mode == "RGB" and loaded.size in ((192, 256), (256, 192))


# --- refused --------------------------------------------------------------------------------------------

def _bad_files(tmp: Path) -> dict[str, tuple[object, str]]:
    """name -> (source given to load_rgb, fragment the one-line message must contain)."""
    jpeg = LEAF.read_bytes()
    png = encode(ORIGINAL, "PNG")
    files = {
        "truncated_jpeg_half": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "truncated_jpeg_header_only": (jpeg[:600], "truncated or corrupt"),
        "truncated_png": (png[: len(png) // 3], "truncated or corrupt"),
        "truncated_webp": (encode(ORIGINAL, "WEBP")[:400], "truncated or corrupt"),
        "png_damaged_pixel_data": (_flip(png, png.find(b"IDAT") + 2000), "truncated or corrupt"),
        "zero_bytes": (b"", "is empty (0 bytes)"),
        "text_renamed_jpg": ("notes.txt is not a photo\n" * 3, "it is a text file"),
        "html_error_page": ("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "it is a text file"),
        "heic_bytes": (HEIC_LEAF.read_bytes(), "HEIC/HEIF format, which is not supported"),
        "pdf_of_the_leaf": (encode(ORIGINAL, "PDF"), "PDF format, which is not supported"),
        "eps_would_run_ghostscript": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n", "EPS"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', "SVG"),
        "zip_of_photos": (_zip_of(LEAF), "it is a zip archive"),
        "icon_format_not_offered": (encode(ORIGINAL, "ICO"), "not a readable image"),
        "strip_20000x1": (encode(Image.new("RGB", (20000, 1), "green"), "PNG"), "too long and thin"),
        "jpeg_claiming_100_megapixels": (jpeg_claiming(LEAF, 10000, 10000), "10000x10000 (100 megapixels)"),
    }
    on_disk = {
        "zero_byte_file.jpg": (b"", "is empty (0 bytes)"),
        "text_renamed.jpg": (b"shopping list: beans\n", "it is a text file"),
        "IMG_0001.HEIC": (HEIC_LEAF.read_bytes(), "HEIC format, which is not supported"),
        "heic_renamed.jpg": (HEIC_LEAF.read_bytes(), "HEIC/HEIF format"),
        "truncated.jpg": (jpeg[:3000], "truncated or corrupt"),
    }
    for name, (data, expect) in on_disk.items():
        (tmp / name).write_bytes(data)
        files[f"path:{name}"] = (tmp / name, expect)
    (tmp / "folder.jpg").mkdir()
    files["path:folder.jpg"] = (tmp / "folder.jpg", "is a folder")
    files["path:missing.jpg"] = (tmp / "missing.jpg", "does not exist")
    os.mkfifo(tmp / "pipe.jpg")  # reading it would block forever
    files["path:pipe.jpg"] = (tmp / "pipe.jpg", "not a regular file")
    files["path:/dev/zero"] = (Path("/dev/zero"), "not a regular file")
    return files


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _zip_of(photo: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(photo, f"healthy/{photo.name}")
    return buf.getvalue()


def test_bad_photos_are_refused_with_one_clear_line(tmp_path: Path) -> None:
    cases = _bad_files(tmp_path)
    problems = []

    def check(name: str, source, expect: str) -> None:
        if isinstance(source, str):
            source = source.encode()
        try:
            load_rgb(source)
        except ImageError as e:
            msg = str(e)
            if "\n" in msg or expect not in msg:
                problems.append(f"{name}: {msg!r} (expected {expect!r})")
            if isinstance(source, Path) and source.name not in msg:
                problems.append(f"{name}: the message does not name the file: {msg!r}")
        except BaseException as e:  # noqa: BLE001 - any other exception is the failure being tested for
            problems.append(f"{name}: {type(e).__name__}: {e}")
        else:
            problems.append(f"{name}: was accepted")

    for name, (source, expect) in cases.items():
        done = threading.Thread(target=check, args=(name, source, expect), daemon=True)
        done.start()
        done.join(10)  # a FIFO or device must not block the reader
        if done.is_alive():
            problems.append(f"{name}: still reading after 10 s")
    assert not problems, "\n".join(problems)
    assert len(cases) >= 25


def test_uploaded_file_object_named_heic_is_named_in_the_message() -> None:
    upload = io.BytesIO(HEIC_LEAF.read_bytes())
    upload.name = "IMG_4032.HEIC"
    with pytest.raises(ImageError, match=r"^'IMG_4032\.HEIC' is in HEIC format, which is not supported"):
        load_rgb(upload)


# --- too many pixels: refused from the header, without decoding ------------------------------------------

@pytest.fixture(scope="session")
def huge_images(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Oversized photos, cheap to make: a real 100-megapixel PNG (the leaf on a white page, ~300 kB on disk,
    300 MB decoded) and headers that claim 144 MP (Pillow's warning zone) and 4.3 gigapixels (its error zone)."""
    tmp = tmp_path_factory.mktemp("huge")
    big = write_big_png(tmp / "page_100mp.png", 10000, 10000, ORIGINAL)
    assert big.stat().st_size < 2 * 2**20
    (tmp / "jpeg_144mp.jpg").write_bytes(jpeg_claiming(LEAF, 12000, 12000))
    (tmp / "png_4gp.png").write_bytes(png_claiming(65535, 65535))
    (tmp / "jpeg_100mp.jpg").write_bytes(jpeg_claiming(LEAF, 10000, 10000))
    return {"page_100mp.png": (big, "10000x10000 (100 megapixels); the limit is 64 megapixels"),
            "jpeg_100mp.jpg": (tmp / "jpeg_100mp.jpg", "the limit is 64 megapixels"),
            "jpeg_144mp.jpg": (tmp / "jpeg_144mp.jpg", "the limit is 64 megapixels"),
            "png_4gp.png": (tmp / "png_4gp.png", "the limit is 64 megapixels")}


_MEASURE = r"""
import json, resource, sys
from toptune_core.errors import ImageError
from toptune_core.data.images import load_rgb
load_rgb(sys.argv[1])  # a normal photo first: the decoders are loaded and warm
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
out = {}
for path in sys.argv[2:]:
    try:
        load_rgb(path)
        out[path] = "accepted"
    except ImageError as e:
        out[path] = str(e)
print(json.dumps({"messages": out, "peak_growth_mb": peak_mb() - before}))
"""


def test_huge_images_and_decompression_bombs_are_refused_before_decoding(huge_images) -> None:
    paths = [str(p) for p, _ in huge_images.values()]
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(LEAF), *paths], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for name, (path, expect) in huge_images.items():
        msg = report["messages"][str(path)]
        assert expect in msg and name in msg and "\n" not in msg, msg
    # Decoding the 100-megapixel page alone would take 300 MB; refusing all four costs (almost) nothing.
    assert report["peak_growth_mb"] < 20, report


def test_the_pixel_limit_is_what_refuses_a_genuine_page(tmp_path: Path) -> None:
    """A 16 MP page (the leaf on white) reads fine, and is refused, from its header, under a 10 MP limit."""
    page = write_big_png(tmp_path / "page_16mp.png", 4000, 4000, ORIGINAL)
    loaded = load_rgb(page)
    assert loaded.size == (4000, 4000)
    assert mean_abs_diff(loaded.crop((0, 0, 256, 256)), ORIGINAL) == 0
    with pytest.raises(ImageError, match=r"is 4000x4000 \(16 megapixels\); the limit is 10 megapixels"):
        load_rgb(page, max_pixels=10_000_000)


# --- the command line: one line, non-zero exit ------------------------------------------------------------

@pytest.mark.parametrize("case", ["zero_bytes", "heic", "decompression_bomb", "folder"])
def test_cli_predict_refuses_a_bad_photo_with_one_line(case: str, trained, huge_images, tmp_path: Path) -> None:
    if case == "zero_bytes":
        photo, expect = tmp_path / "empty.jpg", "is empty (0 bytes)"
        photo.write_bytes(b"")
    elif case == "heic":
        photo, expect = tmp_path / "IMG_0001.HEIC", "HEIC format, which is not supported"
        shutil.copy(HEIC_LEAF, photo)
    elif case == "decompression_bomb":
        photo, expect = huge_images["page_100mp.png"][0], "the limit is 64 megapixels"
    else:
        photo, expect = tmp_path / "leaf.jpg", "No photos found"  # a folder is searched for photos: none here
        photo.mkdir()
    result = run_cli(["predict", "--run", trained.run.id, str(photo)], trained.home)
    assert result.returncode == 2
    assert_one_line_error(result, expect, photo.name)
