"""The on-disk feature cache: one entry per (dataset fingerprint, backbone, weights, preprocessing, timm, views).

Entries are written to a temporary folder and renamed into place, so an
interrupted extraction never leaves an entry that reads as complete; a lock
file makes two sessions extracting the same entry do the work once.
``get_features`` is what a run calls: the cache entry, or an extraction
that fills it.

Per-photo content reuse: every entry's meta lists each photo's content SHA-256
(``sha256``, in dataset order). On a miss, rows of existing entries with the
same extractor identity whose photos have the same content are reused, and only
the other photos are extracted (``n_extracted``, ``n_reused`` in the new entry's
meta): a dataset version with 5 photos added, moved or renamed costs 5
extractions, not the whole set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from toptune_core.config import Settings
from toptune_core.data.dataset import Dataset
from toptune_core.errors import Cancelled, ToptuneError
from toptune_core.files import content_hashes
from toptune_core.features.extractor import ExtractionResult, FeatureExtractor
from toptune_core.features.views import as_views, n_views
from toptune_core.progress import CancelCheck, ProgressCallback


@dataclass
class CachedFeatures:
    """A cache entry: features of the readable photos of one dataset with one backbone and view set."""

    key: str
    features: np.ndarray  # (n_ok, n_views, dim)
    relpaths: list[str]  # all photos of the dataset, in dataset order
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[str, str]]  # (relpath, reason) of unreadable photos
    extract_seconds: float  # how long the extraction took when it was made
    meta: dict = field(default_factory=dict)

    def full_matrix(self) -> np.ndarray:
        """(n, n_views, dim) features in dataset order, NaN for unreadable photos."""
        out = np.full((len(self.relpaths),) + self.features.shape[1:], np.nan, dtype=np.float32)
        out[self.ok] = self.features
        return out


class FeatureCache:
    """Features on disk under ``root`` (default ``$TOPTUNE_HOME/features``), one folder per key."""

    def __init__(self, root: Optional[str | Path] = None, *, settings: Optional[Settings] = None):
        self.root = Path(root) if root else (settings or Settings.from_env()).features_dir
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cache_error(self.root, e) from None

    @staticmethod
    def key(fingerprint: str, identity: dict) -> str:
        blob = json.dumps({"dataset": fingerprint, **identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Optional[CachedFeatures]:
        """The complete entry for ``key``, or None. A damaged entry is discarded, never returned."""
        entry = self.path(key)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            features = as_views(np.load(entry / "features.npy", allow_pickle=False))
            ok = np.asarray(meta["ok"], dtype=bool)
            if features.shape[0] != int(ok.sum()) or len(meta["relpaths"]) != len(ok):
                raise ValueError("inconsistent entry")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return CachedFeatures(key, features, meta["relpaths"], ok, [tuple(e) for e in meta["errors"]],
                              meta["extract_seconds"], meta)

    def save(self, key: str, result: ExtractionResult, relpaths: list[str], meta: dict) -> CachedFeatures:
        """Write an entry atomically: to a temporary folder, then one rename."""
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise _cache_error(self.root, e) from None
        try:
            np.save(tmp / "features.npy", result.features.astype(np.float32), allow_pickle=False)
            record = {**meta, "relpaths": relpaths, "ok": result.ok.tolist(),
                      "errors": [(relpaths[i], reason) for i, reason in result.errors],
                      "extract_seconds": result.seconds, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(record))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, self.path(key))
            except OSError:  # another process finished the same entry first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:  # disk full, read-only: nothing half-written is left
            shutil.rmtree(tmp, ignore_errors=True)
            raise _cache_error(self.root, e) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = self.load(key)
        if entry is None:
            raise ToptuneError("The feature cache could not be written; check free disk space in "
                               f"'{self.root}'.")
        return entry

    @contextmanager
    def lock(self, key: str, should_cancel: Optional[CancelCheck] = None) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` across processes (fcntl); waiting for it can be cancelled."""
        try:
            fh = open(self.root / f".{key}.lock", "w")
        except OSError as e:
            raise _cache_error(self.root, e) from None
        with fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # another session is extracting the same features: wait for it
                    if should_cancel is not None and should_cancel():
                        raise Cancelled("Feature extraction was cancelled (while waiting for another session "
                                        "extracting the same features).") from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def pass_rate(self, backbone: str, newest: int = 20) -> Optional[float]:
        """Backbone passes per second of the newest extraction with ``backbone`` in this cache, counted at the
        backbone's own input size (a pass at side ``r`` counts ``(r / own) ** 2``); None when there is none. What
        the Top-tune page estimates a first extraction's time from."""
        from toptune_core.backbones.catalogue import get_backbone

        own = get_backbone(backbone).input_size
        metas = sorted(self.root.glob("*/meta.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:newest]
        for path in metas:
            try:
                meta = json.loads(path.read_text())
                if meta.get("backbone") != backbone or not meta.get("extract_seconds") or meta.get("n_reused"):
                    continue  # (an entry that reused rows extracted only a few photos: no estimate of a rate)
                side = int(meta["data_config"]["input_size"][-1])
                passes = sum(meta["ok"]) * n_views(meta.get("views", "1")) * (side / own) ** 2
                return passes / float(meta["extract_seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def clean_stale_temporaries(self, older_than_s: float = 3600) -> int:
        """Remove leftovers of interrupted writes; returns how many were removed."""
        removed = 0
        for p in self.root.glob(".tmp-*"):
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed


def _cache_error(root: Path, e: OSError) -> ToptuneError:
    return ToptuneError(f"Could not write the feature cache in '{root}' ({e.strerror or e}); free some disk space "
                        "or make the data folder writable (TOPTUNE_HOME). Nothing half-written was kept.")


@dataclass
class FeatureSet:
    """What a run gets: the cache entry, and whether it came from the cache."""

    entry: CachedFeatures
    cache_hit: bool
    seconds: float  # time spent getting the features in this call


def get_features(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache, *,
                 progress: Optional[ProgressCallback] = None,
                 should_cancel: Optional[CancelCheck] = None) -> FeatureSet:
    """Features for every photo of ``dataset``: from the cache when present, else made and cached (extracting
    only the photos whose content no entry of the same extractor has, see the module docstring)."""
    start = time.perf_counter()
    key = cache.key(dataset.fingerprint(), extractor.cache_identity)
    entry = cache.load(key)
    if entry is None:
        with cache.lock(key, should_cancel):
            entry = cache.load(key)  # someone else may have made it while we waited
            if entry is None:
                result, reuse = _extract_new_photos(dataset, extractor, cache, progress, should_cancel)
                if not result.ok.any():
                    raise ToptuneError(f"None of the {len(dataset)} photos could be read; the first problem: "
                                       f"{result.errors[0][1] if result.errors else 'unknown'}")
                entry = cache.save(key, result, dataset.relpaths,
                                   {**extractor.cache_identity, **extractor.engine_record,
                                    "dataset_root": str(dataset.root), **reuse})
                return FeatureSet(entry, False, time.perf_counter() - start)
    return FeatureSet(entry, True, time.perf_counter() - start)


def _content_hashes(paths: list[Path], should_cancel: Optional[CancelCheck]) -> list[Optional[str]]:
    """Each photo's SHA-256 (None for a file that cannot be read: the extractor reports it)."""
    def stop() -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled("Feature extraction was cancelled.")

    return content_hashes(paths, stop)


def photos_not_cached(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache) -> int:
    """How many photos of ``dataset`` ``get_features`` would have to extract: 0 when its entry exists, else those
    whose content no entry of the same extractor has (a dataset version with a few photos moved: 0, so its entry
    is made from the cache in a moment). Photos that cannot be hashed here (objects) count as missing."""
    if cache.path(cache.key(dataset.fingerprint(), extractor.cache_identity)).is_dir():
        return 0
    known: set[str] = set()
    for path in cache.root.glob("*/meta.json"):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        hashes = meta.get("sha256")
        if isinstance(hashes, list) and _same_identity(meta, extractor.cache_identity) and \
                meta.get("dataset_root") == str(dataset.root):  # another version of the same photos
            known.update(h for h, good in zip(hashes, meta.get("ok") or []) if good and h)
    if not known:  # nothing to reuse: not worth reading every photo to say so
        return len(dataset)
    return sum(h is None or h not in known for h in _content_hashes(list(dataset.paths), None))


def _same_identity(meta: dict, identity: dict) -> bool:
    return all(json.dumps(meta.get(k), sort_keys=True) == json.dumps(v, sort_keys=True)
               for k, v in json.loads(json.dumps(identity)).items())


def _reusable_rows(cache: FeatureCache, identity: dict, wanted: set[str]) -> dict[str, np.ndarray]:
    """Features (n_views, dim) of photos whose content hash is in ``wanted``, from entries with ``identity``
    (newest entries first)."""
    found: dict[str, np.ndarray] = {}
    metas = sorted(cache.root.glob("*/meta.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in metas:
        if len(found) == len(wanted):
            break
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        hashes = meta.get("sha256")
        if not isinstance(hashes, list) or not _same_identity(meta, identity):
            continue
        ok = meta.get("ok") or []
        rows = {h: r for r, h in enumerate(h for h, good in zip(hashes, ok) if good)
                if h in wanted and h not in found}
        if not rows:
            continue
        entry = cache.load(path.parent.name)
        if entry is not None:
            found.update({h: entry.features[r] for h, r in rows.items()})
    return found


def _extract_new_photos(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache,
                        progress: Optional[ProgressCallback], should_cancel: Optional[CancelCheck]
                        ) -> tuple[ExtractionResult, dict]:
    """The features of ``dataset``: rows reused by content hash, the rest extracted; and the meta to record."""
    start = time.perf_counter()
    hashes = _content_hashes(list(dataset.paths), should_cancel)
    reused = _reusable_rows(cache, extractor.cache_identity, {h for h in hashes if h is not None})
    todo = [i for i, h in enumerate(hashes) if h not in reused]
    if todo:
        fresh = extractor.transform([dataset.paths[i] for i in todo], progress=progress, should_cancel=should_cancel)
    else:  # every photo's features are in the cache already: the model is not even loaded
        fresh = ExtractionResult(np.zeros((0, 1, 1), np.float32), np.zeros(0, dtype=bool), [])
    ok = np.ones(len(hashes), dtype=bool)
    ok[todo] = fresh.ok
    rows: dict[int, np.ndarray] = {i: reused[h] for i, h in enumerate(hashes) if h in reused}
    rows.update(zip([i for i, good in zip(todo, fresh.ok) if good], fresh.features))
    features = np.stack([rows[i] for i in np.flatnonzero(ok)]).astype(np.float32, copy=False) if ok.any() \
        else fresh.features
    errors = [(todo[j], reason) for j, reason in fresh.errors]
    result = ExtractionResult(features, ok, errors, time.perf_counter() - start)
    return result, {"sha256": hashes, "n_extracted": len(todo), "n_reused": len(hashes) - len(todo)}
