"""Fuzzing (hypothesis, a bounded number of examples) of the two readers that take arbitrary user bytes.

* The photo reader, ``images.load_rgb``: real leaf photos in ten encodings, with bytes flipped, cut, inserted,
  and size fields rewritten to huge or zero values, plus plain random bytes; as bytes, file objects and files.
  It must return an upright RGB image inside the pixel and aspect limits, or raise ``ImageError`` with one line.
* The dataset-upload path, ``uploads.save_uploaded_zip`` -> ``extract_uploaded_zip`` -> ``load_dataset``: zips
  built from generated member names (``..``, absolute and drive paths, backslashes, dot files, ``__MACOSX``,
  non-ASCII, very long names, duplicates, directories, symbolic links) holding real photos or junk. It must
  give a dataset whose every file lies inside the data folder, or one ``ToptuneError`` line, and leave nothing
  half-extracted. (Byte-level mutation of zips is fuzzed in tests/test_archive.py.)
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from toptune_core.errors import ImageError, ToptuneError
from toptune_core.data.images import MAX_ASPECT_RATIO, MAX_PIXELS, load_rgb
from toptune_core.config import DEMO_DATASET

from .realfiles import encode, leaf_rgb, png_16bit_rgb

_SMALL = leaf_rgb().resize((48, 40))
_EXIF = Image.Exif()
_EXIF[0x0112] = 6
SEEDS = {
    "jpeg": encode(_SMALL, "JPEG", quality=80),
    "jpeg_exif": encode(_SMALL, "JPEG", exif=_EXIF),
    "jpeg_progressive_cmyk": encode(_SMALL.convert("CMYK"), "JPEG", progressive=True),
    "png_rgba": encode(_SMALL.convert("RGBA"), "PNG"),
    "png_palette": encode(_SMALL.convert("P"), "PNG"),
    "png_16bit": png_16bit_rgb(_SMALL),
    "webp": encode(_SMALL, "WEBP"),
    "gif": encode(_SMALL, "GIF", save_all=True, append_images=[_SMALL.rotate(90)]),
    "tiff": encode(_SMALL, "TIFF", compression="tiff_deflate"),
    "bmp": encode(_SMALL, "BMP"),
}


@st.composite
def photo_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "size", "insert", "delete"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "size":  # a 16- or 32-bit field (dimensions live in such fields) set to an extreme value
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 40000]))
            data[at:at + width] = struct.pack(">H" if width == 2 else ">I", value & (0xFFFF if width == 2 else 0xFFFFFFFF))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=photo_bytes(), how=st.sampled_from(["bytes", "file object", "path"]))
def test_photo_reader_returns_a_bounded_rgb_image_or_one_clear_line(data: bytes, how: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if how == "bytes":
            source = data
        elif how == "file object":
            source = io.BytesIO(data)
            source.name = "upload.jpg"
        else:
            source = Path(tmp) / "photo.jpg"
            source.write_bytes(data)
        try:
            im = load_rgb(source, min_size=32)
        except ImageError as e:
            assert "\n" not in str(e) and str(e).strip()
        else:
            w, h = im.size
            assert im.mode == "RGB" and 0 < w * h <= MAX_PIXELS and max(w, h) <= MAX_ASPECT_RATIO * min(w, h)


# --- zips through the upload path -------------------------------------------------------------------------

_PHOTOS = [p.read_bytes() for p in sorted(DEMO_DATASET.rglob("*.jpg"))[:3]]
_PART = st.sampled_from(["beans", "healthy", "bean_rust", "angular_leaf_spot", "..", ".", "", "C:", ".hidden",
                         "__MACOSX", "été", "葉", "a b", "x" * 300, "IMG_0001.jpg", "notes.txt", "leaf.JPG",
                         "~", "con", "a\\..\\..\\b"])


@st.composite
def zip_members(draw) -> list[tuple[zipfile.ZipInfo, bytes]]:
    members = []
    for _ in range(draw(st.integers(0, 8))):
        parts = draw(st.lists(_PART, min_size=1, max_size=4))
        name = ("/" if draw(st.integers(0, 9)) == 0 else "") + "/".join(parts)
        kind = draw(st.sampled_from(["photo", "photo", "photo", "junk", "dir", "link"]))
        info = zipfile.ZipInfo(name + ("/" if kind == "dir" and not name.endswith("/") else ""))
        info.compress_type = zipfile.ZIP_DEFLATED
        if kind == "link":
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        content = {"photo": draw(st.sampled_from(_PHOTOS)), "junk": draw(st.binary(max_size=64)),
                   "dir": b"", "link": b"/etc/passwd"}[kind]
        members.append((info, content))
    return members


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(members=zip_members())
def test_zip_upload_gives_a_dataset_inside_the_data_folder_or_one_clear_line(members) -> None:
    from toptune_core.data import uploads
    from toptune_core.data.dataset import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": duplicates are part of the test
            for info, content in members:
                zf.writestr(info, content)
        old = os.environ.get("TOPTUNE_HOME")
        os.environ["TOPTUNE_HOME"] = str(home)
        try:
            try:
                ds = load_dataset(uploads.extract_uploaded_zip(uploads.save_uploaded_zip("fuzz.zip", buf.getvalue())))
            except ToptuneError as e:
                assert "\n" not in str(e)
                leftovers = [p.name for p in (home / "uploads").iterdir() if not p.name.endswith(".zip")] \
                    if (home / "uploads").exists() else []
                # a refused zip leaves no folder; a zip that unpacked but holds no usable dataset keeps its folder
                assert all(not n.startswith(".") for n in leftovers), leftovers
            else:
                inside = (home / "uploads").resolve()
                for p in ds.paths:
                    assert p.resolve().is_relative_to(inside) and not p.is_symlink()
                    assert p.read_bytes() in _PHOTOS or p.stat().st_size <= 64
            assert sorted(os.listdir(tmp)) == ["home"]  # nothing was written next to the data folder
            for p in home.rglob("*"):
                assert not p.is_symlink(), p
        finally:
            if old is None:
                os.environ.pop("TOPTUNE_HOME", None)
            else:
                os.environ["TOPTUNE_HOME"] = old
