"""The on-disk feature cache: one entry per (dataset fingerprint, backbone, weights, preprocessing, timm, views).

Entries are written to a temporary folder and renamed into place, so an
interrupted extraction never leaves an entry that reads as complete; a lock
file makes two sessions extracting the same entry do the work once.
``get_features`` is what a run calls: the cache entry, or an extraction
that fills it.
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
                if meta.get("backbone") != backbone or not meta.get("extract_seconds"):
                    continue
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
    """Features for every photo of ``dataset``: from the cache when present, else extracted and cached."""
    start = time.perf_counter()
    key = cache.key(dataset.fingerprint(), extractor.cache_identity)
    entry = cache.load(key)
    if entry is None:
        with cache.lock(key, should_cancel):
            entry = cache.load(key)  # someone else may have made it while we waited
            if entry is None:
                result = extractor.transform(dataset.paths, progress=progress, should_cancel=should_cancel)
                if not result.ok.any():
                    raise ToptuneError(f"None of the {len(dataset)} photos could be read; the first problem: "
                                       f"{result.errors[0][1] if result.errors else 'unknown'}")
                entry = cache.save(key, result, dataset.relpaths,
                                   {**extractor.cache_identity, **extractor.engine_record,
                                    "dataset_root": str(dataset.root)})
                return FeatureSet(entry, False, time.perf_counter() - start)
    return FeatureSet(entry, True, time.perf_counter() - start)
