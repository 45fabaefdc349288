"""Patch-level familiarity (PatchCore-lite): is any small part of a photo unlike every part of the training photos?

Pooling averages a lesion of a few cells with the rest of the leaf, so a
disease the model never learned can look like a learned one after pooling.
Here each cell of the backbone's map before pooling (9 x 9 cells of 1280
values for tf_efficientnet_lite0 at 288 px) is a unit vector; a **bank** holds
the cells of the training photos (a greedy coreset of them, Roth et al.,
CVPR 2022, when there are many); a photo's score is the mean distance of its
``top`` most unusual cells to their nearest bank cell. A cell may be left out
as background when too few of its pixels are green (excess green 2G - R - B).

``feature_maps`` is the one place that gets the maps (PyTorch
``forward_features`` on the pixel pipeline's tensors; the exported graph's
second output may replace it); ``cached_feature_maps`` keeps a dataset's maps
on disk under TOPTUNE_HOME (``patch_maps/``), float16, the photo as it is
(one view), so reruns are fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, DEFAULT_RESOLUTION
from toptune_core.errors import ImageError
from toptune_core.progress import ProgressCallback, ProgressMeter

#: Fixed before any result was seen (README, "A disease it never learned: what was tried").
TOP_CELLS = 3  # a photo's score: the mean of its 3 most unusual cells (PatchCore takes the max; the mean is steadier)
CORESET_SHARE = 0.10  # the bank keeps a greedy coreset of 10 % of the training cells
CORESET_DIM = 128  # the coreset is chosen on a random projection to 128 dimensions (as PatchCore)
GREEN_EXCESS = 20  # a pixel is green when 2G - R - B > 20 (8-bit values)
LEAF_SHARE = 0.25  # a cell is leaf when at least 25 % of its pixels are green


@dataclass
class PatchMaps:
    """The maps of some photos: unit cells, the share of green pixels of each cell, the pooled features."""

    cells: np.ndarray  # (n, n_cells, dim) float16, each cell L2-normalised
    green: np.ndarray  # (n, n_cells) float32, share of the cell's pixels that are green
    pooled: np.ndarray  # (n, dim) float32: the mean of each photo's raw cells (= the backbone's pooled features)
    ok: np.ndarray  # (n,) bool: the photo could be read (rows of unreadable photos are zero)

    def subset(self, idx) -> "PatchMaps":
        return PatchMaps(self.cells[idx], self.green[idx], self.pooled[idx], self.ok[idx])

    @staticmethod
    def concat(parts: Sequence["PatchMaps"]) -> "PatchMaps":
        return PatchMaps(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("cells", "green", "pooled", "ok")))


def green_share(pixels: np.ndarray, grid: int) -> np.ndarray:
    """(n, S, S, 3) uint8 -> (n, grid * grid): share of each cell's pixels with 2G - R - B > ``GREEN_EXCESS``."""
    p = pixels.astype(np.int16)
    green = (2 * p[..., 1] - p[..., 0] - p[..., 2]) > GREEN_EXCESS
    n, s = green.shape[:2]
    edges = np.linspace(0, s, grid + 1).round().astype(int)
    out = np.empty((n, grid, grid), dtype=np.float32)
    for i in range(grid):
        for j in range(grid):
            out[:, i, j] = green[:, edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean(axis=(1, 2))
    return out.reshape(n, grid * grid)


class MapModel:
    """The backbone (PyTorch) and its pixel pipeline, loaded once. ``stages``: None for the map the pooled
    features come from (after the head convolution); a number n for a mid-level map instead, the output of the
    first n stages of blocks averaged over each cell's 3 x 3 neighbourhood (PatchCore's local features)."""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, resolution: Optional[int] = None,
                 stages: Optional[int] = None):
        from toptune_core.backbones.pixels import PixelPipeline, eval_data_config

        self.backbone, self.stages = backbone, stages
        self.resolution = resolution or DEFAULT_RESOLUTION.get(backbone)
        self.pipeline = PixelPipeline(eval_data_config(backbone, resolution=self.resolution))
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from toptune_core.backbones.catalogue import create_model

            self._model = create_model(self.backbone, num_classes=0)
        return self._model

    def maps(self, pixels: np.ndarray) -> np.ndarray:
        """(n, dim, h, w) float32 maps of (n, S, S, 3) uint8 crops: the map before pooling from the exported
        graph's second output (``features.featuremap``, the one place the class maps read it too), or the
        mid-level map when ``stages`` (PyTorch: the graph has no such output)."""
        if self.stages is None:
            from toptune_core.features.featuremap import features_and_maps

            return features_and_maps(self.extractor, pixels).maps[:, 0]
        import torch

        with torch.inference_mode():
            return self.forward(self.pipeline.to_tensor(pixels)).float().numpy()

    @property
    def extractor(self):
        """The one-view extractor of this backbone and resolution (its exported graph gives the map)."""
        if getattr(self, "_extractor", None) is None:
            from toptune_core.features.extractor import FeatureExtractor

            self._extractor = FeatureExtractor(self.backbone, views="1", resolution=self.resolution)
        return self._extractor

    def forward(self, x):
        """(n, dim, h, w) torch: the mid-level map (``stages``), or PyTorch's own map before pooling."""
        m = self.model
        if self.stages is None:
            return m.forward_features(x)
        import torch.nn.functional as F

        x = m.bn1(m.conv_stem(x))
        for block in m.blocks[:self.stages]:
            x = block(x)
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def feature_maps(sources: Sequence, model: MapModel, *, batch_size: int = 16,
                 progress: Optional[ProgressCallback] = None) -> PatchMaps:
    """The backbone's map before pooling for each photo (as it is, one view), from ``MapModel.maps``:
    (n, dim, H', W') maps become ``H' * W'`` unit cells per photo."""
    meter = ProgressMeter("maps", len(sources), progress, "photos")
    parts = []
    for start in range(0, len(sources), batch_size):
        idx = list(range(start, min(start + batch_size, len(sources))))
        batch = model.pipeline.load_batch(sources, idx)
        ok = np.asarray(batch.ok, dtype=bool)
        fmap = model.maps(batch.pixels) if ok.any() else None
        parts.append(_cells(fmap, batch.pixels, ok) if fmap is not None else len(idx))
        meter.update(idx[-1] + 1)
    shaped = next((p for p in parts if not isinstance(p, int)), None)
    if shaped is None:
        raise ImageError("None of the photos could be read.")
    return PatchMaps.concat([p if not isinstance(p, int) else _unreadable(p, shaped) for p in parts])


def _unreadable(n: int, like: PatchMaps) -> PatchMaps:
    """Zero rows for ``n`` unreadable photos, shaped like ``like``."""
    return PatchMaps(np.zeros((n,) + like.cells.shape[1:], like.cells.dtype), np.zeros((n,) + like.green.shape[1:],
                     np.float32), np.zeros((n,) + like.pooled.shape[1:], np.float32), np.zeros(n, dtype=bool))


def _cells(fmap, pixels: np.ndarray, ok: np.ndarray) -> PatchMaps:
    """One batch's maps ((n_ok, dim, h, w) float32) as a ``PatchMaps`` with zero rows for unreadable photos."""
    raw = np.ascontiguousarray(np.transpose(fmap, (0, 2, 3, 1))).reshape(fmap.shape[0], -1, fmap.shape[1])
    n_cells, dim = raw.shape[1:]
    cells = np.zeros((len(ok), n_cells, dim), dtype=np.float16)
    green = np.zeros((len(ok), n_cells), dtype=np.float32)
    pooled = np.zeros((len(ok), dim), dtype=np.float32)
    unit = raw / np.maximum(np.linalg.norm(raw, axis=2, keepdims=True), 1e-12)
    cells[ok], pooled[ok] = unit.astype(np.float16), raw.mean(axis=1)
    green[ok] = green_share(pixels, int(round(np.sqrt(n_cells))))
    return PatchMaps(cells, green, pooled, ok)


def cached_feature_maps(dataset, model: MapModel, *, home: Optional[Path] = None,
                        progress: Optional[ProgressCallback] = None) -> PatchMaps:
    """``feature_maps`` of every photo of ``dataset``, kept on disk under TOPTUNE_HOME/patch_maps by the
    dataset's fingerprint, backbone and resolution (the first call extracts; later ones read)."""
    from toptune_core.config import Settings

    home = Path(home) if home is not None else Settings.from_env().ensure_home()
    identity = {"fingerprint": dataset.fingerprint(), "backbone": model.backbone, "resolution": model.resolution,
                "view": "identity", "dtype": "float16"}
    if model.stages is not None:
        identity["stages"] = model.stages
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    path = home / "patch_maps" / f"{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return PatchMaps(z["cells"], z["green"], z["pooled"], z["ok"])
    maps = feature_maps([str(p) for p in dataset.paths], model, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.{uuid.uuid4().hex[:6]}.tmp.npz")
    np.savez(tmp, cells=maps.cells, green=maps.green, pooled=maps.pooled, ok=maps.ok)
    os.replace(tmp, path)
    return maps


def greedy_coreset(X: np.ndarray, n_keep: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n_keep`` rows of ``X`` chosen by greedy k-centre (each next row the farthest from those
    already chosen), on a random projection to ``CORESET_DIM`` dimensions (Roth et al. 2022, Sener & Savarese)."""
    n = len(X)
    if n_keep >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    dim = X.shape[1]
    P = X.astype(np.float32) @ (rng.standard_normal((dim, CORESET_DIM)).astype(np.float32) / np.sqrt(CORESET_DIM))
    sq = (P * P).sum(axis=1)
    chosen = np.empty(n_keep, dtype=np.int64)
    chosen[0] = int(rng.integers(n))
    nearest = np.full(n, np.inf, dtype=np.float32)
    for i in range(1, n_keep):
        c = chosen[i - 1]
        d = sq + sq[c] - 2.0 * (P @ P[c])
        np.minimum(nearest, d, out=nearest)
        chosen[i] = int(np.argmax(nearest))
    return chosen


def leaf_cells(maps: PatchMaps) -> np.ndarray:
    """(n, n_cells) bool: cells with at least ``LEAF_SHARE`` green pixels; a photo with fewer than ``TOP_CELLS``
    such cells keeps all its cells (a close-up of a brown lesion must not lose the cells that show it)."""
    leaf = maps.green >= LEAF_SHARE
    leaf[leaf.sum(axis=1) < TOP_CELLS] = True
    return leaf


class PatchBank:
    """The training photos' cells (a coreset) and a photo score: the mean of its ``top`` most unusual cells."""

    def __init__(self, share: float = CORESET_SHARE, top: int = TOP_CELLS, leaf_only: bool = False, seed: int = 0):
        self.share, self.top, self.leaf_only, self.seed = share, top, leaf_only, seed

    def fit(self, maps: PatchMaps, photo_ids: Sequence[int]) -> "PatchBank":
        """Bank the cells of the training photos ``maps`` (their ids in ``photo_ids``, kept as ``cell_photo_``)."""
        n, n_cells, dim = maps.cells.shape
        keep = leaf_cells(maps) if self.leaf_only else np.ones((n, n_cells), dtype=bool)
        rows, cols = np.nonzero(keep)
        flat = maps.cells[rows, cols]
        chosen = greedy_coreset(flat, max(1, int(round(self.share * len(flat)))), self.seed)
        self.cells_ = flat[chosen].astype(np.float16)
        self.cell_photo_ = np.asarray(photo_ids)[rows[chosen]]
        return self

    def cell_distances(self, maps: PatchMaps, chunk: int = 64) -> np.ndarray:
        """(n, n_cells): each cell's Euclidean distance to its nearest bank cell (unit vectors)."""
        bank = self.cells_.astype(np.float32)
        n, n_cells, dim = maps.cells.shape
        out = np.empty((n, n_cells), dtype=np.float32)
        for start in range(0, n, chunk):
            q = maps.cells[start:start + chunk].astype(np.float32).reshape(-1, dim)
            best = (q @ bank.T).max(axis=1)
            out[start:start + chunk] = np.sqrt(np.clip(2.0 - 2.0 * best, 0.0, None)).reshape(-1, n_cells)
        return out

    def score(self, maps: PatchMaps, distances: Optional[np.ndarray] = None) -> np.ndarray:
        """(n,) the mean of each photo's ``top`` largest cell distances (leaf cells only when ``leaf_only``)."""
        d = self.cell_distances(maps) if distances is None else distances
        return top_mean(d, leaf_cells(maps) if self.leaf_only else None, self.top)


def top_mean(distances: np.ndarray, keep: Optional[np.ndarray], top: int = TOP_CELLS) -> np.ndarray:
    """Mean of each row's ``top`` largest distances among the kept cells."""
    d = distances if keep is None else np.where(keep, distances, -np.inf)
    part = -np.partition(-d, top - 1, axis=1)[:, :top]
    return part.mean(axis=1)
