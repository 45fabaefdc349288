"""One top-tuned run for the session, shared by the class-map, ``predict --heatmaps`` and offline-page tests:
tf_efficientnet_lite0 at 288 px, 8 views, logistic regression, on the first 20 demo photos of each class, in a
TOPTUNE_HOME of its own (the per-test home of ``conftest.toptune_home`` would not outlive one test)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import copy_subset
from toptune_core.config import DEMO_DATASET, Settings


@dataclass
class FieldRun:
    home: Path
    run_id: str

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, "TOPTUNE_HOME": str(self.home)})  # (the suite's precision too)

    def store(self):
        from toptune_core.runs.store import RunStore

        return RunStore(self.settings.runs_root)

    def predictor(self):
        from toptune_core.predict import Predictor

        return Predictor.from_run(self.run_id, store=self.store(), settings=self.settings)


def held_out_photos(cls: str, n: int) -> list[Path]:
    """The last ``n`` demo photos of ``cls``: never among the run's training photos (the first 20)."""
    return sorted((DEMO_DATASET / cls).glob("*.jpg"))[-n:]


@pytest.fixture(scope="session")
def field_run(tmp_path_factory) -> FieldRun:
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.extractor import FeatureExtractor

    home = tmp_path_factory.mktemp("field_home")
    data = copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("field_data") / "beans", 20)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOPTUNE_HOME", str(home))
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        settings = Settings.from_env({**os.environ, "TOPTUNE_HOME": str(home)})
        run = run_toptuning(data, extractor=FeatureExtractor("tf_efficientnet_lite0", device="cpu", settings=settings),
                            classifier="logreg", views="dihedral", resolution=288)
    return FieldRun(home, run.id)
