"""Safe extraction of dataset zips (no zip slip, no zip bombs, no half-extracted folders).

The whole zip is checked before anything is written. Members are then streamed
into a temporary sibling of the destination, checking CRCs and byte limits as
they go, and the finished folder is moved into place with one ``os.replace``.
Nested zips are left as files; ``__MACOSX/`` and hidden dotfiles are skipped.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional

from toptune_core.errors import Cancelled, ToptuneError

_DEFAULT_ADVICE = "Re-create the zip from the dataset folder."
_DAMAGED_ADVICE = "Download or re-create the zip."
_CHUNK = 1 << 20
# A member smaller than this may compress very well for innocent reasons (a text
# file of repeated characters); the ratio check applies above it.
_RATIO_MIN_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(ToptuneError):
    """The zip is unsafe, damaged or too large; nothing was extracted.

    ``problem`` says what is wrong; ``str(e)`` adds what to do about it.
    """

    def __init__(self, problem: str, advice: str = _DEFAULT_ADVICE):
        self.problem, self.advice = problem, advice
        super().__init__(f"{problem} {advice}".strip())

    def __reduce__(self):
        return (type(self), (self.problem, self.advice))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def _member_parts(name: str) -> list[str]:
    """The path components of a member name; ``ArchiveError`` if it could escape the folder."""
    norm = name.replace("\\", "/")
    if "\x00" in norm:
        raise ArchiveError(f"The zip contains an entry with an invalid name {name!r}; it was not extracted.")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise ArchiveError(f"The zip contains an absolute path {name!r}; it was not extracted.")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"The zip contains an unsafe path {name!r}; it was not extracted.")
    return parts


def _skipped(parts: list[str]) -> bool:
    """macOS resource forks and hidden files/folders are not extracted."""
    return not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_members(infos: list[zipfile.ZipInfo], *, max_files: int, max_total_bytes: int,
                   max_ratio: float) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Validate every entry; return the ones to extract with their path components."""
    if len(infos) > max_files:
        raise ArchiveError(f"The zip has {len(infos):,} entries, more than the limit of {max_files:,}; "
                           "it was not extracted.", "Split the dataset into smaller zips.")
    keep: list[tuple[zipfile.ZipInfo, list[str]]] = []
    seen: set[tuple[str, ...]] = set()
    total = packed = 0
    for info in infos:
        parts = _member_parts(info.filename)
        if _is_symlink(info):
            raise ArchiveError(f"The zip contains a symbolic link {info.filename!r}; it was not extracted.",
                               "Re-create the zip without links (copy the files themselves).")
        if _skipped(parts):
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(f"The zip entry {info.filename!r} is password-protected; it was not extracted.",
                               "Re-create the zip without a password.")
        if info.is_dir():
            keep.append((info, parts))
            continue
        key = tuple(parts)
        if key in seen:
            raise ArchiveError(f"The zip contains {info.filename!r} more than once; it was not extracted.")
        seen.add(key)
        size, csize = info.file_size, info.compress_size
        if size > _RATIO_MIN_BYTES and (csize <= 0 or size / csize > max_ratio):
            ratio = f"{size / csize:,.0f}" if csize > 0 else "unlimited"
            raise ArchiveError(f"The zip entry {info.filename!r} expands from {_mb(csize)} to {_mb(size)} "
                               f"(ratio {ratio}, limit {max_ratio:g}), which looks like a zip bomb; "
                               "it was not extracted.", "Use the original dataset zip.")
        total += size
        packed += max(csize, 0)
        if total > max_total_bytes:
            raise ArchiveError(f"The zip would expand to more than {_mb(max_total_bytes)} "
                               f"(reached at {info.filename!r}); it was not extracted.",
                               "Use a smaller dataset, or split it into several zips.")
        keep.append((info, parts))
    if total > _RATIO_MIN_BYTES and (packed <= 0 or total / packed > max_ratio):
        raise ArchiveError(f"The zip expands from {_mb(packed)} to {_mb(total)} (limit ratio {max_ratio:g}), "
                           "which looks like a zip bomb; it was not extracted.", "Use the original dataset zip.")
    return keep


def _check_dest(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ArchiveError(f"'{dest}' already exists and is not a folder; nothing was extracted.",
                           "Choose another destination.")
    if dest.is_dir() and any(dest.iterdir()):
        raise ArchiveError(f"The folder '{dest}' already exists and is not empty; nothing was extracted.",
                           "Choose another destination or delete that folder.")


def _check_cancel(should_cancel: Optional[Callable[[], bool]]) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("Extraction was cancelled.")


def _extract_members(zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, list[str]]], tmp: Path, *,
                     max_total_bytes: int, should_cancel: Optional[Callable[[], bool]],
                     progress: Optional[Callable[[int, int], None]]) -> None:
    """Stream the members into ``tmp``; CRCs are checked by ``zipfile`` at the end of each member."""
    declared = sum(i.file_size for i, _ in members if not i.is_dir())
    written = 0
    for info, parts in members:
        _check_cancel(should_cancel)
        target = tmp.joinpath(*parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        member_bytes = 0
        with zf.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                member_bytes += len(chunk)
                written += len(chunk)
                if member_bytes > info.file_size or written > max_total_bytes:
                    raise ArchiveError(f"The zip entry {info.filename!r} holds more data than it declares; "
                                       "it was not extracted.", "Use the original dataset zip.")
                dst.write(chunk)
                _check_cancel(should_cancel)
                if progress is not None:
                    progress(written, declared)
        if member_bytes != info.file_size:
            raise ArchiveError(f"The zip entry {info.filename!r} is truncated; it was not extracted.",
                               _DAMAGED_ADVICE)


def safe_extract_zip(zip_path: str | Path, dest_dir: str | Path, *, max_files: int = 20000,
                     max_total_bytes: int = 4 * 2**30, max_ratio: float = 200,
                     should_cancel: Optional[Callable[[], bool]] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Extract ``zip_path`` into ``dest_dir`` (which must not exist, or be empty); return ``dest_dir``.

    Raises ``ArchiveError`` (and extracts nothing) for unsafe paths, symbolic links,
    too many entries, too many bytes, zip bombs and damaged zips. ``progress(done_bytes,
    total_bytes)`` is called while writing; ``should_cancel()`` returning True raises
    ``Cancelled``.
    """
    zip_path, dest = Path(zip_path), Path(dest_dir).absolute()
    if not zip_path.is_file():
        raise ArchiveError(f"The zip file '{zip_path}' does not exist.", "Check the path.")
    _check_dest(dest)
    if not zipfile.is_zipfile(zip_path):
        raise ArchiveError(f"'{zip_path.name}' is not a zip file or is damaged; it was not extracted.",
                           _DAMAGED_ADVICE)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _check_members(zf.infolist(), max_files=max_files, max_total_bytes=max_total_bytes,
                                     max_ratio=max_ratio)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name[:60]}.extracting-", dir=dest.parent))
            try:
                os.chmod(tmp, 0o755)
                _extract_members(zf, members, tmp, max_total_bytes=max_total_bytes,
                                 should_cancel=should_cancel, progress=progress)
                _check_dest(dest)
                os.replace(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except ToptuneError:
        raise
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        raise ArchiveError(f"The zip has entries that clash with each other ({e.strerror}: "
                           f"'{Path(e.filename or '').name}'); it was not extracted.") from e
    except OSError as e:
        if e.filename is None:  # raised while reading the zip (bad offsets, bad bz2 data, ...)
            raise ArchiveError(f"'{zip_path.name}' is damaged ({_one_line(e)}); it was not extracted.",
                               _DAMAGED_ADVICE) from e
        if e.errno in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
            raise ArchiveError(f"The zip has an entry whose name cannot be used here ({e.strerror}: "
                               f"'{Path(e.filename).name}'); it was not extracted.") from e
        raise ArchiveError(f"Could not write the extracted files next to '{dest}' ({e.strerror}); "
                           "nothing was extracted.", "Free some disk space or choose another folder.") from e
    except NotImplementedError as e:
        raise ArchiveError(f"'{zip_path.name}' uses a zip feature that cannot be read here ({_one_line(e)}); "
                           "it was not extracted.", "Re-create the zip with ordinary (deflate) compression.") from e
    except Exception as e:  # BadZipFile, zlib.error, EOFError, UnicodeDecodeError, ... from a malformed zip
        raise ArchiveError(f"'{zip_path.name}' is damaged ({_one_line(e)}); it was not extracted.",
                           _DAMAGED_ADVICE) from e
    return dest


def find_dataset_root(extracted_dir: str | Path) -> Path:
    """The folder that holds the class folders, descending through a lone top-level folder.

    ``x/`` holding only ``beans/`` (plus loose files) which holds ``healthy/``,
    ``rust/`` gives ``x/beans``. A lone folder with no sub-folders of its own (a
    single class folder) is not entered.
    """
    root = Path(extracted_dir)

    def visible_dirs(d: Path) -> list[Path]:
        return [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX"]

    while True:
        dirs = visible_dirs(root)
        if len(dirs) != 1 or not visible_dirs(dirs[0]):
            return root
        root = dirs[0]
