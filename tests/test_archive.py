"""safe_extract_zip refuses unsafe or damaged zips without writing anything, and extracts good ones."""

from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toptune_core.data.archive import ArchiveError, find_dataset_root, safe_extract_zip
from toptune_core.errors import Cancelled, ToptuneError

REPO = Path(__file__).resolve().parent.parent
_DEMO = REPO / "demo_data" / "ibean_leaf_disease"
PHOTOS = _DEMO if _DEMO.is_dir() else Path("/work/shared/datasets/ibean_leaf_disease")
CLASSES = ("angular_leaf_spot", "bean_rust", "healthy")


def photos(cls: str, n: int = 3) -> list[Path]:
    found = sorted((PHOTOS / cls).glob("*.jpg"))[:n]
    assert len(found) == n, f"need {n} photos in {PHOTOS / cls}"
    return found


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]],
             compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty folder that only extractions write into (zips are kept elsewhere)."""
    w = tmp_path / "work"
    w.mkdir()
    return w


def assert_refused(zip_path: Path, work: Path, match: str, **limits) -> ArchiveError:
    before = tree(zip_path.parent.parent)
    dest = work / "out"
    with pytest.raises(ArchiveError, match=match) as info:
        safe_extract_zip(zip_path, dest, **limits)
    assert not dest.exists()
    assert list(work.iterdir()) == [], "a refused zip must leave nothing behind"
    assert tree(zip_path.parent.parent) == before
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ToptuneError)
    return info.value


def test_extracts_real_photos_and_skips_macos_and_hidden_files(tmp_path: Path, work: Path) -> None:
    entries = [(f"{c}/{p.name}", p.read_bytes()) for c in CLASSES for p in photos(c)]
    entries += [("__MACOSX/healthy/._x.jpg", b"junk"), ("healthy/.DS_Store", b"junk"), (".hidden/a.txt", b"x"),
                ("notes.txt", b"hello")]
    zp = make_zip(tmp_path / "zips" / "beans.zip", entries)
    dest = safe_extract_zip(zp, work / "out")
    assert dest == (work / "out").absolute()
    expected = {n for n, _ in entries[:9]} | set(CLASSES) | {"notes.txt"}
    assert tree(dest) == expected
    for name, data in entries[:9]:
        assert (dest / name).read_bytes() == data
    assert [p.name for p in work.iterdir()] == ["out"], "no temporary folder may be left"


def test_empty_existing_dest_is_used_but_non_empty_is_refused(tmp_path: Path, work: Path) -> None:
    zp = make_zip(tmp_path / "zips" / "a.zip", [("healthy/a.txt", b"a")])
    (work / "out").mkdir()
    safe_extract_zip(zp, work / "out")
    assert (work / "out" / "healthy" / "a.txt").read_bytes() == b"a"
    with pytest.raises(ArchiveError, match="already exists and is not empty"):
        safe_extract_zip(zp, work / "out")


@pytest.mark.parametrize("name, match", [
    ("../evil.txt", r"unsafe path '\.\./evil\.txt'"),
    ("healthy/../../evil.txt", "unsafe path"),
    ("..\\evil.txt", "unsafe path"),
    ("/etc/evil.txt", r"absolute path '/etc/evil\.txt'"),
    ("C:/Windows/evil.txt", "absolute path"),
])
def test_zip_slip_is_refused(tmp_path: Path, work: Path, name: str, match: str) -> None:
    zp = make_zip(tmp_path / "zips" / "slip.zip", [("healthy/ok.txt", b"fine"), (zipfile.ZipInfo(name), b"evil")])
    with zipfile.ZipFile(zp) as zf:
        assert zf.namelist()[1] == name  # zipfile kept the hostile name as written
    err = assert_refused(zp, work, match)
    assert "Re-create the zip" in str(err)
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()


def test_symlink_entry_is_refused(tmp_path: Path, work: Path) -> None:
    link = zipfile.ZipInfo("healthy/passwd.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zp = make_zip(tmp_path / "zips" / "link.zip", [("healthy/ok.txt", b"ok"), (link, b"/etc/passwd")])
    assert_refused(zp, work, r"symbolic link 'healthy/passwd\.jpg'")


def test_too_many_files_is_refused(tmp_path: Path, work: Path) -> None:
    zp = make_zip(tmp_path / "zips" / "many.zip", [(f"healthy/{i}.txt", b"x") for i in range(6)])
    assert_refused(zp, work, "6 entries, more than the limit of 5", max_files=5)


def test_zip_bomb_ratio_is_refused(tmp_path: Path, work: Path) -> None:
    zp = make_zip(tmp_path / "zips" / "bomb.zip", [("healthy/zeros.jpg", bytes(50 * 2**20))])
    assert zp.stat().st_size < 2**20
    assert_refused(zp, work, r"'healthy/zeros\.jpg' expands .* zip bomb")


def test_total_size_limit_is_refused(tmp_path: Path, work: Path) -> None:
    entries = [(f"{c}/{p.name}", p.read_bytes()) for c in CLASSES for p in photos(c)]
    zp = make_zip(tmp_path / "zips" / "big.zip", entries, zipfile.ZIP_STORED)
    assert_refused(zp, work, "would expand to more than", max_total_bytes=100_000)


def _patch_sizes(data: bytes, new_size: int) -> bytes:
    """Rewrite the declared uncompressed size of the only member, in both headers."""
    buf = bytearray(data)
    local = buf.find(b"PK\x03\x04")
    buf[local + 22:local + 26] = struct.pack("<I", new_size)
    central = buf.find(b"PK\x01\x02")
    buf[central + 24:central + 28] = struct.pack("<I", new_size)
    return bytes(buf)


def test_member_larger_than_declared_is_refused(tmp_path: Path, work: Path) -> None:
    zp = make_zip(tmp_path / "zips" / "lie.zip", [("healthy/a.txt", os.urandom(5000))], zipfile.ZIP_STORED)
    zp.write_bytes(_patch_sizes(zp.read_bytes(), 10))
    assert_refused(zp, work, "damaged|truncated|more data")


def test_bad_crc_refuses_whole_zip(tmp_path: Path, work: Path) -> None:
    good, bad = photos("healthy", 2)
    zp = make_zip(tmp_path / "zips" / "crc.zip", [("healthy/a.jpg", good.read_bytes()),
                                                   ("healthy/b.jpg", bad.read_bytes())], zipfile.ZIP_STORED)
    data = bytearray(zp.read_bytes())
    second = data.find(b"PK\x03\x04", 10)
    data[second + 200] ^= 0xFF  # inside b.jpg's stored bytes
    zp.write_bytes(bytes(data))
    assert_refused(zp, work, "damaged.*CRC")


def test_not_a_zip_is_refused(tmp_path: Path, work: Path) -> None:
    zp = tmp_path / "zips" / "fake.zip"
    zp.parent.mkdir()
    zp.write_bytes(photos("healthy", 1)[0].read_bytes())
    assert_refused(zp, work, "not a zip file")


def test_nested_zip_is_left_as_a_file(tmp_path: Path, work: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("healthy/x.jpg", photos("healthy", 1)[0].read_bytes())
    zp = make_zip(tmp_path / "zips" / "outer.zip",
                  [("beans/healthy/a.jpg", b"a"), ("beans/more.zip", inner.getvalue())])
    dest = safe_extract_zip(zp, work / "out")
    assert (dest / "beans" / "more.zip").read_bytes() == inner.getvalue()
    assert not (dest / "beans" / "healthy" / "x.jpg").exists()


def test_find_dataset_root(tmp_path: Path, work: Path) -> None:
    entries = [(f"ibean/{c}/{p.name}", p.read_bytes()) for c in CLASSES for p in photos(c, 1)]
    zp = make_zip(tmp_path / "zips" / "top.zip", entries + [("ibean/LICENSE", b"MIT"),
                                                            ("__MACOSX/ibean/._LICENSE", b"junk")])
    dest = safe_extract_zip(zp, work / "out")
    assert find_dataset_root(dest) == dest / "ibean"
    # deeper single-child chains are followed, and class folders at the top are kept
    deep = work / "deep" / "a" / "b"
    for c in CLASSES:
        (deep / c).mkdir(parents=True)
    assert find_dataset_root(work / "deep") == deep
    assert find_dataset_root(deep) == deep
    # a lone class folder (no sub-folders) is not entered
    (work / "one" / "healthy").mkdir(parents=True)
    assert find_dataset_root(work / "one") == work / "one"


def _valid_zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("beans/healthy/a.txt", b"healthy leaf " * 20, zipfile.ZIP_DEFLATED)
        zf.writestr("beans/rust/b.txt", b"rusty leaf", zipfile.ZIP_STORED)
        zf.writestr("beans/rust/", b"")
    return buf.getvalue()


VALID = _valid_zip_bytes()


@st.composite
def zip_like_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zip_like_bytes())
def test_random_or_mutated_zips_extract_or_raise_archive_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        zp, work = Path(tmp) / "in.zip", Path(tmp) / "work"
        zp.write_bytes(data)
        work.mkdir()
        try:
            dest = safe_extract_zip(zp, work / "out", max_total_bytes=2**20)
        except ArchiveError as e:
            assert "\n" not in str(e)
            assert list(work.iterdir()) == []
        else:
            assert [p.name for p in work.iterdir()] == ["out"]
            for p in dest.rglob("*"):
                assert p.resolve().is_relative_to(dest.resolve()) and not p.is_symlink()
        assert sorted(os.listdir(tmp)) == ["in.zip", "work"]


def test_cancel_leaves_nothing(tmp_path: Path, work: Path) -> None:
    zp = make_zip(tmp_path / "zips" / "a.zip", [(f"healthy/{i}.txt", b"x") for i in range(3)])
    calls = iter([False, False, True])
    with pytest.raises(Cancelled):
        safe_extract_zip(zp, work / "out", should_cancel=lambda: next(calls, True))
    assert list(work.iterdir()) == []
