"""The sweep: every backbone x top classifier on one dataset, one recorded run each, one progress bar.

Runs are ordered backbone by backbone, so each backbone's features are
extracted once, by its first run, and read from the feature cache by the
others (and by any later sweep or run on the same photos). Every result is an
ordinary recorded run (``experiment.run_toptuning``), so it lands on the
Compare page, which marks the best trade-offs between accuracy and training
time (``reports.pareto_front``). A combination that fails (e.g. a backbone
whose weights cannot be downloaded offline) is recorded as failed and the
sweep goes on; a cancel stops the whole sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from toptune_core.backbones.catalogue import CATALOGUE, get_backbone
from toptune_core.errors import Cancelled, JobInterrupted, ToptuneError
from toptune_core.methods.classifiers import CLASSIFIERS
from toptune_core.progress import CancelCheck, Progress, ProgressCallback, ProgressMeter
from toptune_core.runs.store import RunRecord, RunStore


def offline_backbones() -> list[str]:
    """The catalogue's backbones whose weights ship with the install (the sweep's default)."""
    return [name for name, spec in CATALOGUE.items() if spec.offline]


@dataclass
class SweepResult:
    runs: list[RunRecord] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (backbone, classifier, one-line reason)


class _OneBar:
    """Turns each run's progress events into one sweep-wide bar: runs done (with the current one's fraction)."""

    def __init__(self, total: int, progress: Optional[ProgressCallback], should_cancel: Optional[CancelCheck]):
        self.meter = ProgressMeter("sweep", total, progress, "runs", should_cancel)
        self.index, self.what = 0, ""

    def start(self, index: int, what: str) -> None:
        self.index, self.what = index, what
        self.meter.update(index, f"{what}: starting")

    def __call__(self, p: Progress) -> None:
        self.meter.update(self.index + (p.fraction or 0.0), f"{self.what}: {p.describe()}")


def check_choices(backbones: Sequence[str], classifiers: Sequence[str]) -> None:
    """One clear line for an unknown backbone or classifier, before anything runs."""
    for name in backbones:
        get_backbone(name)
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown:
        raise ToptuneError(f"Unknown classifier(s): {', '.join(unknown)}. Choose among: {', '.join(CLASSIFIERS)}.")
    if not backbones or not classifiers:
        raise ToptuneError("Choose at least one backbone and one classifier to sweep.")


def _new_extractor(backbone: str):
    from toptune_core.features.extractor import FeatureExtractor

    return FeatureExtractor(backbone)  # its model loads only if features must be extracted


def run_sweep(data: str | Path, *, test_data: Optional[str | Path] = None,
              backbones: Optional[Sequence[str]] = None, classifiers: Optional[Sequence[str]] = None,
              seed: int = 0, seeds: Optional[Sequence[int]] = None, test_size: float = 0.25, split: str = "random",
              store: Optional[RunStore] = None,
              cache=None, extractor_for: Optional[Callable[[str], object]] = None,
              progress: Optional[ProgressCallback] = None,
              should_cancel: Optional[CancelCheck] = None) -> SweepResult:
    """Top-tune every ``backbones`` x ``classifiers`` combination on ``data``; each is a recorded run.

    Defaults: the offline backbones and every classifier. ``seeds``: repeat every combination with each of
    these seeds (another split and model seed each time; default: ``seed`` only). ``extractor_for(backbone)``:
    an already loaded feature extractor (the dashboard keeps one per backbone); None makes one per backbone here.
    """
    from toptune_core.data.split import load_data
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache

    backbones = list(backbones or offline_backbones())
    classifiers = list(classifiers or CLASSIFIERS)
    check_choices(backbones, classifiers)
    load_data(data, test_data)  # a wrong folder is one error, not one failed run per combination
    store, cache = store or RunStore(), cache or FeatureCache()
    combos = [(b, c, s) for b in backbones for s in (seeds or [seed]) for c in classifiers]
    bar = _OneBar(len(combos), progress, should_cancel)
    result, extractors = SweepResult(), {}
    for index, (backbone, classifier, seed) in enumerate(combos):
        bar.start(index, f"{backbone} + {CLASSIFIERS[classifier].label}" + (f", seed {seed}" if seeds else ""))
        if backbone not in extractors:
            extractors[backbone] = (extractor_for or _new_extractor)(backbone)
        try:
            run = run_toptuning(data, test_data=test_data, backbone=backbone, classifier=classifier, seed=seed,
                                test_size=test_size, split=split, store=store, cache=cache,
                                extractor=extractors[backbone], progress=bar, should_cancel=should_cancel)
        except (Cancelled, JobInterrupted):
            raise
        except ToptuneError as e:
            result.failures.append((backbone, classifier, str(e)))
            continue
        result.runs.append(run)
    bar.meter.update(len(combos), "done")
    return result
