"""The extraction's stream: photos decoded in batches and run through the engine in bounded memory.

``extract(extractor, sources)`` is ``FeatureExtractor.transform``. On a CPU,
``plan.lanes`` threads each decode a batch and run the engine on it
(``features.reader.in_lanes``: in order, at most ``lanes + 1`` batches ahead);
with one lane (or on CUDA) ``plan.decode_workers`` threads decode ahead while
the calling thread runs the model (``features.reader.read_ahead``); an eval
transform without a pixel stage falls back to timm's transform per photo. A
bounded number of batches exist as pixels at any time, so memory does not grow
with the number of photos; only the features (5 KB a photo and view) do.
"""

from __future__ import annotations

import time
from typing import Iterator, Optional, Sequence

import numpy as np

from toptune_core.backbones.pixels import PixelBatch, unreadable_reason
from toptune_core.data.images import ImageSource
from toptune_core.features import views as view_sets
from toptune_core.features.plan import ExtractionPlan, ExtractionResult
from toptune_core.features.reader import chunked, in_lanes, read_ahead
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.system import nothing, torch_threads


def extract(extractor, sources: Sequence[ImageSource], *, progress: Optional[ProgressCallback] = None,
            should_cancel: Optional[CancelCheck] = None) -> ExtractionResult:
    """Features (the views ``extractor`` extracts) of every readable photo in ``sources``; unreadable ones are
    reported, not fatal."""
    n = len(sources)
    meter = ProgressMeter("extract", n, progress, "images", should_cancel)
    start = time.perf_counter()
    if extractor._engine is None:
        meter.update(0, "loading the model")
    engine = extractor.load_engine(lambda line: meter.update(0, line))
    plan = extractor.plan()
    uses_torch = engine.name == "torch" and plan.device == "cpu"
    batches = chunked(range(n), plan.batch_size)
    if not extractor.pixels.has_pixel_stage:
        stream = _plain_batches(extractor, sources, batches)
    elif plan.lanes > 1:
        stream = _lane_batches(extractor, sources, batches, plan)
    else:
        stream = _pooled_batches(extractor, sources, batches, plan)
    chunks, ok, errors = [], np.zeros(n, dtype=bool), []
    with (torch_threads(plan.threads) if plan.threads and uses_torch else nothing()):
        try:
            for batch in stream:
                ok[batch.indices[0]:batch.indices[-1] + 1] = batch.ok
                errors.extend(batch.errors)
                if batch.features is not None:
                    chunks.append(batch.features)
                meter.update(batch.indices[-1] + 1)
        finally:
            stream.close()  # on cancel or error: stops and joins the threads
    dim = chunks[0].shape[-1] if chunks else extractor.spec.feature_dim
    features = np.concatenate(chunks) if chunks else \
        np.zeros((0, extractor.n_extracted_views, dim), dtype=np.float32)
    return ExtractionResult(features, ok, errors, time.perf_counter() - start)


def _with_features(extractor, batch: PixelBatch) -> PixelBatch:
    if len(batch.pixels):
        batch.features = extractor._run_views(extractor._engine, batch.pixels)  # on the threads extract() set up
    batch.pixels = batch.pixels[:0]  # the pixels are no longer needed
    return batch


def _lane_batches(extractor, sources, batches: list[list[int]], plan: ExtractionPlan) -> Iterator[PixelBatch]:
    """CPU: ``plan.lanes`` threads each take the next batch, decode it and run the engine on it."""
    def start_lane() -> None:
        if extractor._engine.name == "torch":
            import torch

            torch.set_num_threads(plan.threads)  # this thread's own OpenMP team

    return in_lanes(batches, lambda b: _with_features(extractor, extractor.pixels.load_batch(sources, b)), plan.lanes,
                    start_lane, name="extract-lane")


def _pooled_batches(extractor, sources, batches: list[list[int]], plan: ExtractionPlan) -> Iterator[PixelBatch]:
    """``plan.decode_workers`` threads decode ahead (``features.reader``) while this thread runs the model."""
    for _, batch in read_ahead(batches, lambda b: extractor.pixels.load_batch(sources, b), plan.decode_workers):
        yield _with_features(extractor, batch)


def _plain_batches(extractor, sources, batches: list[list[int]]) -> Iterator[PixelBatch]:
    """Fallback for an eval transform without a pixel stage: timm's transform per photo, here."""
    import torch

    for b in batches:
        tensors, ok, errors = [], [], []
        for i in b:
            try:
                tensors.append(extractor.preprocess(sources[i]))
                ok.append(True)
            except Exception as e:
                ok.append(False)
                errors.append((i, unreadable_reason(sources[i], e)))
        feats = None
        if tensors:
            batch = torch.stack(tensors)
            steps = view_sets.VIEW_SETS[extractor.views][extractor.first_view:]
            turned = [torch.rot90(batch, turns, dims=(2, 3)) if turns else batch for turns, _ in steps]
            cut = torch.stack([t.flip(3) if mirror else t for t, (_, mirror) in zip(turned, steps)], dim=1)
            feats = extractor.features_of(cut.flatten(0, 1)).reshape(len(tensors), len(steps), -1)
        yield PixelBatch(b, np.zeros((0, 0, 0, 3), dtype=np.uint8), ok, errors, feats)
