"""What a top-tune's feature extraction will cost before it starts, and whether a first model comes first.

Counted from what the cache lacks (``features.cache``): the views the entry of
these photos does not hold yet, or, without an entry, the photos whose content
no entry of the same extractor holds with all the views (a dataset version
re-uses the rest), plus the near-duplicate reference (``leakage``) when its
entry is missing (before the first model only where the run needs it
there). Seconds come from the rate of the newest extraction with the
backbone in this cache (``FeatureCache.pass_rate``: measured on this machine),
so there are none until one extraction has run here.

A progressive run (``TopTuner.stages``) fits a first model on the photo as it
is before extracting the other views when its entry has no view yet and at
least ``MIN_PHOTOS_TO_STAGE`` photos need extracting: below that the remaining
views take about as long as a second fit would, and the first model would be
replaced a moment after it appeared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MIN_PHOTOS_TO_STAGE = 32


@dataclass(frozen=True)
class ExtractionEstimate:
    """Backbone passes (counted at the backbone's own input size) before the first and before the final model."""

    photos_to_extract: int  # photos with views to extract
    first_passes: float  # work before the first model (all of it when ``staged`` is False)
    final_passes: float  # all the work before the final model (the first's included)
    rate: Optional[float]  # passes/s on this machine (None: never measured here)
    staged: bool  # a first model on one view comes before the final one

    @property
    def first_seconds(self) -> Optional[float]:
        return self.first_passes / self.rate if self.rate else None

    @property
    def final_seconds(self) -> Optional[float]:
        return self.final_passes / self.rate if self.rate else None


def estimate_extraction(dataset, extractor, cache, *, reference_first: bool = True) -> ExtractionEstimate:
    """The extraction a top-tune of ``dataset`` with ``extractor`` (its views and resolution) still needs;
    ``reference_first``: whether the run reads the near-duplicate reference before its first model
    (``leakage.reference_comes_first``) or after it."""
    from toptune_core.backbones.catalogue import get_backbone
    from toptune_core.features.cache import photos_not_cached

    size = (extractor.resolution / get_backbone(extractor.backbone).input_size) ** 2
    have = cache.views_in(cache.key(dataset.fingerprint(), extractor.cache_identity))
    need = extractor.n_views
    photos = photos_not_cached(dataset, extractor, cache) if have < need else 0
    staged = have == 0 and need > 1 and photos >= MIN_PHOTOS_TO_STAGE
    reference = _reference_passes(dataset, cache, extractor)
    final = photos * (need - have) * size + reference
    first = photos * size + (reference if reference_first else 0.0) if staged else final
    return ExtractionEstimate(photos, first, final, cache.pass_rate(extractor.backbone), staged)


def _reference_passes(dataset, cache, extractor) -> float:
    """Passes of the near-duplicate reference (``leakage``: one view at its own size) when its entry is missing,
    counted at ``extractor``'s backbone's own size; none when top-tuning reads the reference's own features."""
    from toptune_core.backbones.catalogue import get_backbone
    from toptune_core.leakage import reference_extractor

    reference = reference_extractor(extractor)
    if extractor.model_identity == reference.model_identity:
        return 0.0
    if cache.views_in(cache.key(dataset.fingerprint(), reference.cache_identity)):
        return 0.0
    return len(dataset) * (reference.resolution / get_backbone(extractor.backbone).input_size) ** 2
