"""Fixtures of the reliability suite: a small trained run to classify with (see realfiles.py for the photos)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from toptune_core.config import DEMO_DATASET


# --- a trained run to classify with ---------------------------------------------------------------------

@dataclass
class Trained:
    home: Path
    data: Path
    store: object
    run: object
    predictor: object


@pytest.fixture(scope="session")
def trained(tmp_path_factory, lite0_extractor) -> Trained:
    """A completed top-tuning run (tf_efficientnet_lite0 + Random Forest) on 8 real photos per class.

    It lives in its own data folder, shared by the session on purpose (tests only read it).
    """
    from tests.conftest import copy_subset
    from toptune_core.features.cache import FeatureCache
    from toptune_core.predict import Predictor
    from toptune_core.runs.store import RunStore
    from toptune_core.experiment import run_toptuning

    home = tmp_path_factory.mktemp("trained_home")
    data = copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("trained_data") / "beans", 8)
    store = RunStore(home)
    run = run_toptuning(data, store=store, cache=FeatureCache(home / "features"), extractor=lite0_extractor)
    assert run.status == "completed"
    return Trained(home, data, store, run, Predictor.from_run(run.id, store=store, extractor=lite0_extractor))
