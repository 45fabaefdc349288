"""Eden Library agricultural datasets: download, cache and combination (the catalogue: ``data.eden_catalogue``).

Each Eden dataset is one species and condition, i.e. one class, labelled by the
folder-name prefix before the first ``-`` (as in Eden's notebooks). A download
is streamed to ``<cache>/downloads/<name>.zip.part`` (resumed with an HTTP
Range request when possible), checked, renamed to ``.zip`` and extracted safely
into ``<cache>/eden/<name>/``; that folder only ever appears complete, and its
presence is the cache hit. Several datasets side by side form one multi-class
problem: ``download_eden_datasets`` downloads them concurrently, reports one
combined progress (bytes, rate) and returns a folder of symlinks to them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from toptune_core.data.archive import ArchiveError, safe_extract_zip
from toptune_core.data.dataset import eden_label  # noqa: F401  (re-exported: the label rule lives with the dataset scanner)
from toptune_core.data.eden_catalogue import EDEN_CATALOGUE, EdenDataset  # noqa: F401  (re-exported)
from toptune_core.errors import Cancelled, ToptuneError

EDEN_BASE_URL = "https://api.edenlibrary.ai/datasets/"
USER_AGENT = "toptune (Eden Library dataset download)"
_CHUNK = 256 * 1024
_PROGRESS_EVERY_S = 0.1
#: Datasets downloaded at the same time (Eden's top-tuning notebook uses four).
DOWNLOAD_WORKERS = 4

#: ``progress(done_bytes, total_bytes_or_None, bytes_per_second)``
DownloadProgress = Callable[[int, Optional[int], float], None]


class DownloadError(ToptuneError):
    """An Eden dataset could not be downloaded or unpacked."""


def eden_url(name: str, base_url: str = EDEN_BASE_URL) -> str:
    """The zip URL of dataset ``name``: ``base_url`` + URL-encoded name + ``.zip``."""
    return base_url.rstrip("/") + "/" + urllib.parse.quote(name) + ".zip"


def _check_name(name: str) -> None:
    if not name or name.strip() != name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise DownloadError(f"{name!r} is not a valid Eden dataset name. Pick a dataset from the list.")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _network_error(name: str, url: str, exc: BaseException) -> DownloadError:
    """A one-line ``DownloadError`` for a failed request, with a hint that fits the failure."""
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {_one_line(exc.reason)}".strip()
        hint = ("The server has no such dataset; check the name." if exc.code in (403, 404, 410)
                else "The server is having trouble; try again later, or use the demo dataset or a local folder.")
    else:
        inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(inner, (TimeoutError, socket.timeout)):
            reason = "the connection timed out"
        else:
            reason = _one_line(getattr(inner, "strerror", None) or inner) or type(inner).__name__
        hint = "You appear to be offline; use the demo dataset or a local folder."
    return DownloadError(f"Could not download Eden dataset '{name}' from {url}: {reason.rstrip('.')}. {hint}")


def _cancel_check(should_cancel: Optional[Callable[[], bool]], name: str) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"The download of Eden dataset '{name}' was cancelled.")


@contextmanager
def _locked(lock_path: Path, should_cancel: Optional[Callable[[], bool]], name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX only) so two jobs never write the same files."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            yield
            return
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _cancel_check(should_cancel, name)
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_valid_zip(path: Path, *, deep: bool = False) -> bool:
    """True if ``path`` is a zip whose central directory can be read; ``deep`` also checks every CRC.

    A resumed download is checked deeply: its first part may come from another version of the file.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None if deep else True
    except Exception:
        return False


def _fetch(name: str, url: str, part: Path, *, progress: Optional[DownloadProgress], timeout: float,
           should_cancel: Optional[Callable[[], bool]]) -> bool:
    """Stream ``url`` into ``part``, resuming from its current size when the server allows it.

    Returns True if the download was resumed (appended to an existing partial file).
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    _cancel_check(should_cancel, name)
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the partial file does not fit the server's file: start again
            part.unlink()
            return _fetch(name, url, part, progress=progress, timeout=timeout, should_cancel=should_cancel)
        raise _network_error(name, url, e) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise _network_error(name, url, e) from e
    with resp:
        resumed = offset > 0 and resp.status == 206 and (
            resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"))
        if resp.status == 206 and not resumed:  # a range we did not ask for: start again
            part.unlink(missing_ok=True)
            resp.close()
            return _fetch(name, url, part, progress=progress, timeout=timeout, should_cancel=should_cancel)
        length = resp.headers.get("Content-Length", "")
        start = offset if resumed else 0
        total = start + int(length) if length.isdigit() else None
        done, last_report, t0 = start, 0.0, time.monotonic()

        def report(final: bool = False) -> None:
            nonlocal last_report
            now = time.monotonic()
            if progress is not None and (final or now - last_report >= _PROGRESS_EVERY_S):
                last_report = now
                progress(done, total, (done - start) / max(now - t0, 1e-6))

        def stopped(reason: str) -> DownloadError:
            of = f" of {total / 2**20:,.1f}" if total is not None else ""
            return DownloadError(f"The download of Eden dataset '{name}' from {url} stopped after "
                                 f"{done / 2**20:,.1f}{of} MB ({reason}). Check the connection and run it again "
                                 "to resume.")

        report(final=True)
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                _cancel_check(should_cancel, name)
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    out.flush()
                    raise stopped(_one_line(e) or type(e).__name__) from e
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                report()
        report(final=True)
    if total is not None and done != total:
        raise stopped("the connection closed early")
    return resumed


def _extract(name: str, zip_path: Path, final: Path, should_cancel: Optional[Callable[[], bool]]) -> None:
    """Extract ``zip_path`` so that ``final`` holds the dataset's images (or ``images/``), atomically."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name[:60]}.extracting-", dir=final.parent))
    try:
        out = safe_extract_zip(zip_path, staging / "zip", should_cancel=should_cancel)
        entries = list(out.iterdir())
        # The zip may hold the dataset folder itself: don't nest it twice.
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name.strip() == name.strip():
            out = entries[0]
        os.replace(out, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_locked(name: str, url: str, final: Path, downloads: Path, *, progress: Optional[DownloadProgress],
                     timeout: float, should_cancel: Optional[Callable[[], bool]]) -> None:
    """Fetch (or reuse) ``<name>.zip`` and extract it to ``final``; the caller holds the lock."""
    part, zip_path = downloads / f"{name}.zip.part", downloads / f"{name}.zip"
    final.parent.mkdir(parents=True, exist_ok=True)
    if zip_path.exists() and not _is_valid_zip(zip_path):
        zip_path.unlink()
    if not zip_path.exists():
        resumed = _fetch(name, url, part, progress=progress, timeout=timeout, should_cancel=should_cancel)
        if resumed and not _is_valid_zip(part, deep=True):  # the old part may not match: start over
            part.unlink()
            _fetch(name, url, part, progress=progress, timeout=timeout, should_cancel=should_cancel)
        if not _is_valid_zip(part):
            part.unlink()
            raise DownloadError(f"The file downloaded for Eden dataset '{name}' from {url} is not a valid zip "
                                "(truncated, or an error page); it was deleted. Try again later, or use the "
                                "demo dataset or a local folder.")
        os.replace(part, zip_path)
    try:
        _extract(name, zip_path, final, should_cancel)
    except ArchiveError as e:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"The zip downloaded for Eden dataset '{name}' was rejected: {e.problem} "
                            "It was deleted; run the download again, or use the demo dataset or a local "
                            "folder.") from e


def download_eden_dataset(name: str, cache_dir: str | Path, *, base_url: str = EDEN_BASE_URL,
                          progress: Optional[DownloadProgress] = None, timeout: float = 30,
                          should_cancel: Optional[Callable[[], bool]] = None) -> Path:
    """Download and unpack Eden dataset ``name``; return ``<cache_dir>/eden/<name>``.

    Returns at once, without network, if that folder exists. ``progress(done_bytes,
    total_bytes_or_None, bytes_per_s)`` is called while downloading; ``should_cancel()``
    returning True raises ``Cancelled`` (the partial download is kept for resuming).
    Raises ``DownloadError`` when offline, on HTTP errors, for a damaged zip or a full disk.
    """
    _check_name(name)
    cache = Path(cache_dir).expanduser().absolute()
    final = cache / "eden" / name
    if final.is_dir():
        return final
    url = eden_url(name, base_url)
    downloads = cache / "downloads"
    try:
        with _locked(downloads / f"{name}.lock", should_cancel, name):
            if not final.is_dir():  # else another job finished it while we waited
                _download_locked(name, url, final, downloads, progress=progress, timeout=timeout,
                                 should_cancel=should_cancel)
    except OSError as e:  # local disk trouble; network errors are already DownloadErrors
        if final.is_dir():
            return final
        raise DownloadError(f"Could not save Eden dataset '{name}' under '{cache}' ({e.strerror or _one_line(e)}). "
                            "Free some disk space or choose another cache folder.") from e
    return final


def _combined_ok(folder: Path, targets: dict[str, Path]) -> bool:
    """True if ``folder`` holds exactly one working symlink per dataset, pointing at it."""
    try:
        entries = {p.name: p for p in folder.iterdir()}
    except OSError:
        return False
    return entries.keys() == targets.keys() and all(
        p.is_symlink() and p.resolve() == targets[n].resolve() for n, p in entries.items())


class CombinedProgress:
    """Byte counts of several concurrent downloads -> one ``progress(done, total, rate)`` over all of them.

    ``total`` is known once every dataset has reported its size (a dataset already
    in the cache counts as 0 bytes); ``rate`` counts the bytes fetched in this call
    (not those resumed from an earlier one) over the time since it started.
    """

    def __init__(self, names: Sequence[str], progress: Optional[DownloadProgress]):
        self._progress = progress
        self._done: dict[str, int] = {}
        self._first: dict[str, int] = {}
        self._total: dict[str, Optional[int]] = {n: None for n in names}
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def for_dataset(self, name: str) -> DownloadProgress:
        def report(done: int, total: Optional[int], rate: float) -> None:
            with self._lock:
                self._first.setdefault(name, done)
                self._done[name], self._total[name] = done, total
                if total is not None:
                    self._known.add(name)
                self._emit()
        return report

    def finished(self, name: str) -> None:
        """``name`` needs no more bytes (downloaded, from the cache, or failed)."""
        with self._lock:
            if name not in self._known:
                self._known.add(name)
                self._total[name] = self._done.get(name, 0)
            self._emit()

    def _emit(self) -> None:
        if self._progress is None:
            return
        done = sum(self._done.values())
        total = sum(t or 0 for t in self._total.values()) if len(self._known) == len(self._total) else None
        fetched = done - sum(self._first.values())
        self._progress(done, total, fetched / max(time.monotonic() - self._t0, 1e-6))


def _download_all(names: Sequence[str], cache_dir: str | Path, workers: int,
                  progress: Optional[DownloadProgress], should_cancel: Optional[Callable[[], bool]],
                  **kw) -> dict[str, Path]:
    """Download ``names`` in up to ``workers`` threads; the first failure stops the others (their partial
    files stay, to resume) and is raised."""
    failed = threading.Event()
    combined = CombinedProgress(names, progress)

    def stop() -> bool:
        return failed.is_set() or (should_cancel is not None and bool(should_cancel()))

    def one(name: str) -> Path:
        try:
            return download_eden_dataset(name, cache_dir, progress=combined.for_dataset(name), should_cancel=stop,
                                         **kw)
        except BaseException:
            failed.set()
            raise
        finally:
            combined.finished(name)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names))), thread_name_prefix="eden-download") as pool:
        futures = {n: pool.submit(one, n) for n in names}
    problems = [f.exception() for f in futures.values() if f.exception() is not None]
    if problems:  # the cause, not the other downloads it cancelled
        raise next((e for e in problems if not isinstance(e, Cancelled)), problems[0])
    return {n: f.result() for n, f in futures.items()}


def download_eden_datasets(names: Sequence[str], cache_dir: str | Path, *, workers: int = DOWNLOAD_WORKERS,
                           progress: Optional[DownloadProgress] = None,
                           should_cancel: Optional[Callable[[], bool]] = None, **kw) -> Path:
    """Download several Eden datasets at once; return a folder holding one symlink per dataset.

    The folder is ``<cache_dir>/eden_combined/<hash of the sorted names>/``; read it as
    one multi-class dataset whose classes are ``eden_label`` of each entry. Up to
    ``workers`` datasets download at the same time; ``progress(done, total, rate)``
    covers all of them together (``CombinedProgress``). ``kw`` goes to
    ``download_eden_dataset``. The folder is built beside its final place and moved
    in, so it is never half-built.
    """
    unique = sorted(set(names))
    if not unique:
        raise DownloadError("No Eden dataset was chosen. Pick at least one dataset from the list.")
    targets = _download_all(unique, cache_dir, workers, progress, should_cancel, **kw)
    cache = Path(cache_dir).expanduser().absolute()
    key = hashlib.sha256("\n".join(unique).encode()).hexdigest()[:12]
    combined = cache / "eden_combined" / key
    if _combined_ok(combined, targets):
        return combined
    old: Optional[Path] = None
    tmp: Optional[Path] = None
    try:
        combined.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=combined.parent))
        os.chmod(tmp, 0o755)
        for n, target in targets.items():
            os.symlink(os.path.relpath(target, tmp), tmp / n, target_is_directory=True)
        if combined.exists() or combined.is_symlink():  # stale or broken: move it aside
            old = combined.parent / f".{key}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(combined, old)
        os.replace(tmp, combined)
        tmp = None
    except OSError as e:
        if _combined_ok(combined, targets):  # another job built the same folder meanwhile
            return combined
        if old is not None and not combined.exists():
            os.replace(old, combined)
            old = None
        raise DownloadError(f"Could not build the combined Eden folder '{combined}' ({e.strerror or _one_line(e)}). "
                            "Check that the cache folder is writable and supports symbolic links.") from e
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                if leftover.is_symlink() or leftover.is_file():
                    leftover.unlink()
                else:
                    shutil.rmtree(leftover, ignore_errors=True)
    return combined
