"""The on-disk feature cache: one entry per (dataset fingerprint, backbone, weights, preprocessing, timm, engine
precision).

**Views in stages.** Every view set is the start of one order of views
(``features.views.ORDER``), so an entry holds the first k views of each photo,
whatever set asked for them, and says how many (``n_views``). A request for
more views than an entry has extracts only the views it lacks and writes the
entry again with them (``get_features``); a request for fewer reads the first
ones. So a progressive run's first stage (the photo as it is) and its final
stage (all views) share one entry, a run cancelled between them keeps the first
stage's views, and the next run extracts only the rest.

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
    """A cache entry: features of the readable photos of one dataset with one backbone, view set and precision."""

    key: str
    features: np.ndarray  # (n_ok, n_views, dim)
    relpaths: list[str]  # all photos of the dataset, in dataset order
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[str, str]]  # (relpath, reason) of unreadable photos
    extract_seconds: float  # how long the extraction took when it was made
    meta: dict = field(default_factory=dict)

    @property
    def n_views(self) -> int:
        """How many views of each photo the entry holds (the first ones of ``views.ORDER``)."""
        return int(self.features.shape[1])

    def first_views(self, n: int) -> "CachedFeatures":
        """The entry as a request for ``n`` views sees it: itself when it holds exactly ``n``, else a view of
        its first ``n`` (no copy)."""
        if n == self.n_views:
            return self
        if n > self.n_views:
            raise ToptuneError(f"The feature cache entry holds {self.n_views} view(s) of each photo, not {n}.")
        return CachedFeatures(self.key, self.features[:, :n], self.relpaths, self.ok, self.errors,
                              self.extract_seconds, {**self.meta, "n_views": n})

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

    def views_in(self, key: str) -> int:
        """How many views of each photo the entry ``key`` holds (0: no entry), from its meta alone."""
        try:
            meta = json.loads((self.path(key) / "meta.json").read_text())
            return int(meta.get("n_views") or n_views(meta.get("views", "1")))
        except (OSError, ValueError, TypeError):
            return 0

    def save(self, key: str, result: ExtractionResult, relpaths: list[str], meta: dict) -> CachedFeatures:
        """Write an entry atomically: to a temporary folder, then one rename (an entry with fewer views that it
        replaces is moved aside first, then removed)."""
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise _cache_error(self.root, e) from None
        try:
            np.save(tmp / "features.npy", result.features.astype(np.float32), allow_pickle=False)
            record = {**meta, "n_views": int(as_views(result.features).shape[1]), "relpaths": relpaths,
                      "ok": result.ok.tolist(),
                      "errors": [(relpaths[i], reason) for i, reason in result.errors],
                      "extract_seconds": result.seconds, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(record))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            self._put_in_place(tmp, key, record["n_views"])
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

    def _put_in_place(self, tmp: Path, key: str, views: int) -> None:
        """Rename the written folder ``tmp`` (an entry of ``views`` views) to the entry's place. An entry already
        there with fewer views is replaced (moved aside, then removed); one with as many or more is kept (another
        process was faster)."""
        target = self.path(key)
        if self.views_in(key) >= views:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = self.root / f".old-{key}-{uuid.uuid4().hex[:8]}"
        if target.exists():
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

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
                if meta.get("backbone") != backbone or not meta.get("extract_seconds") or meta.get("n_reused") \
                        or meta.get("n_extended", sum(meta["ok"])) != sum(meta["ok"]):
                    continue  # (an entry that reused rows extracted only a few photos: no estimate of a rate)
                side = int(meta["data_config"]["input_size"][-1])
                views = int(meta.get("n_views") or n_views(meta.get("views", "1")))
                passes = sum(meta["ok"]) * views * (side / own) ** 2
                return passes / float(meta["extract_seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def clean_stale_temporaries(self, older_than_s: float = 3600) -> int:
        """Remove leftovers of interrupted writes; returns how many were removed."""
        removed = 0
        for p in [*self.root.glob(".tmp-*"), *self.root.glob(".old-*")]:
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
    """Features of every photo of ``dataset`` in the extractor's view set: from the cache when its entry holds
    that many views, else made and cached: the views an entry lacks are added to it (see the module docstring);
    without an entry, only the photos whose content no entry of the same extractor has are extracted."""
    start = time.perf_counter()
    need = extractor.n_views
    key = cache.key(dataset.fingerprint(), extractor.cache_identity)
    entry = cache.load(key)
    if entry is None or entry.n_views < need:
        with cache.lock(key, should_cancel):
            entry = cache.load(key)  # someone else may have made it while we waited
            if entry is None or entry.n_views < need:
                entry = _make_entry(dataset, extractor, cache, key, entry, progress, should_cancel)
                return FeatureSet(entry.first_views(need), False, time.perf_counter() - start)
    return FeatureSet(entry.first_views(need), True, time.perf_counter() - start)


def _make_entry(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache, key: str,
                entry: Optional[CachedFeatures], progress, should_cancel) -> CachedFeatures:
    """Write the entry ``key`` with the extractor's views: a new one, or ``entry`` with the views it lacks."""
    if entry is None:
        result, meta = _extract_new_photos(dataset, extractor, cache, progress, should_cancel)
        if not result.ok.any():
            raise ToptuneError(f"None of the {len(dataset)} photos could be read; the first problem: "
                               f"{result.errors[0][1] if result.errors else 'unknown'}")
        meta["stage_seconds"] = [[extractor.n_views, result.seconds]]
    else:
        result, meta = _add_views(dataset, extractor, cache, entry, progress, should_cancel)
    identity = extractor.cache_identity  # (a bf16 engine that failed its check ran f32: another key)
    return cache.save(cache.key(dataset.fingerprint(), identity), result, dataset.relpaths,
                      {**identity, **extractor.engine_record, "views": extractor.views,
                       "dataset_root": str(dataset.root), **meta})


def _add_views(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache, entry: CachedFeatures,
               progress, should_cancel) -> tuple[ExtractionResult, dict]:
    """``entry``'s features with the views from its ``n_views``-th to the extractor's last added, for the photos
    it could read: the rows of photos whose content another entry holds with all these views are reused, the
    missing views of the others extracted."""
    need, have = extractor.n_views, entry.n_views
    readable = np.flatnonzero(entry.ok)
    hashes = entry.meta.get("sha256") or [None] * len(entry.relpaths)
    reused = _reusable_rows(cache, extractor.cache_identity, {hashes[i] for i in readable if hashes[i]}, need)
    todo = [r for r, i in enumerate(readable) if hashes[i] not in reused]
    if todo:
        more = extractor.reconfigured(first_view=have)
        fresh = more.transform([dataset.paths[readable[r]] for r in todo], progress=progress,
                               should_cancel=should_cancel)
    else:  # every photo's views are in other entries: the model is not even loaded
        fresh = ExtractionResult(np.zeros((0, need - have, 1), np.float32), np.zeros(0, dtype=bool), [])
    if not fresh.ok.all():
        raise ToptuneError(f"A photo read a moment ago could not be read again: {fresh.errors[0][1]}")
    features = np.empty((len(readable), need, entry.features.shape[-1]), dtype=np.float32)
    features[:, :have] = entry.features
    if todo:
        features[todo, have:] = fresh.features
    for r, i in enumerate(readable):
        if hashes[i] in reused:
            features[r] = reused[hashes[i]]
    index = {rel: i for i, rel in enumerate(entry.relpaths)}
    result = ExtractionResult(features, entry.ok, [(index[rel], reason) for rel, reason in entry.errors],
                              entry.extract_seconds + fresh.seconds)
    meta = {k: entry.meta[k] for k in ("sha256", "n_extracted", "n_reused") if k in entry.meta}
    meta["stage_seconds"] = [*entry.meta.get("stage_seconds", []), [need, fresh.seconds]]
    meta["n_extended"] = len(todo)
    return result, meta


def _content_hashes(paths: list[Path], should_cancel: Optional[CancelCheck]) -> list[Optional[str]]:
    """Each photo's SHA-256 (None for a file that cannot be read: the extractor reports it)."""
    def stop() -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled("Feature extraction was cancelled.")

    return content_hashes(paths, stop)


def photos_not_cached(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache) -> int:
    """How many photos of ``dataset`` ``get_features`` would have to extract views of: 0 when its entry holds the
    extractor's views, else those whose content no entry of the same extractor holds with that many views (a
    dataset version with a few photos moved: 0, so its entry is made from the cache in a moment). Photos that
    cannot be hashed here (objects) count as missing; with nothing in the cache to reuse, no photo is read."""
    need = extractor.n_views
    if cache.views_in(cache.key(dataset.fingerprint(), extractor.cache_identity)) >= need:
        return 0
    known = hashes_held(cache, extractor.cache_identity, need)
    if not known:  # nothing to reuse: not worth reading every photo to say so
        return len(dataset)
    return sum(h is None or h not in known for h in _content_hashes(list(dataset.paths), None))


def hashes_held(cache: FeatureCache, identity: dict, views: int) -> set[str]:
    """Content hashes of the photos that entries with ``identity`` hold with at least ``views`` views."""
    found: set[str] = set()
    for path in cache.root.glob("*/meta.json"):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _same_identity(meta, identity) and int(meta.get("n_views") or 0) >= views:
            found.update(h for h, ok in zip(meta.get("sha256") or [], meta.get("ok") or []) if ok and h)
    return found


def _same_identity(meta: dict, identity: dict) -> bool:
    return all(json.dumps(meta.get(k), sort_keys=True) == json.dumps(v, sort_keys=True)
               for k, v in json.loads(json.dumps(identity)).items())


def _reusable_rows(cache: FeatureCache, identity: dict, wanted: set[str], views: int) -> dict[str, np.ndarray]:
    """Features (views, dim) of photos whose content hash is in ``wanted``, from entries with ``identity`` that
    hold at least ``views`` views (newest entries first)."""
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
        if not isinstance(hashes, list) or not _same_identity(meta, identity) or \
                int(meta.get("n_views") or 0) < views:
            continue
        ok = meta.get("ok") or []
        rows = {h: r for r, h in enumerate(h for h, good in zip(hashes, ok) if good)
                if h in wanted and h not in found}
        if not rows:
            continue
        entry = cache.load(path.parent.name)
        if entry is not None:
            found.update({h: entry.features[r, :views] for h, r in rows.items()})
    return found


def _extract_new_photos(dataset: Dataset, extractor: FeatureExtractor, cache: FeatureCache,
                        progress: Optional[ProgressCallback], should_cancel: Optional[CancelCheck]
                        ) -> tuple[ExtractionResult, dict]:
    """The features of ``dataset``: rows reused by content hash, the rest extracted; and the meta to record."""
    start = time.perf_counter()
    hashes = _content_hashes(list(dataset.paths), should_cancel)
    reused = _reusable_rows(cache, extractor.cache_identity, {h for h in hashes if h is not None},
                            extractor.n_views)
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
