"""Shared fixtures: real leaf photos from the shipped demo dataset, real offline backbone weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from toptune_core.config import DEMO_DATASET

REPO = Path(__file__).resolve().parent.parent

# The suite runs the backbone in f32 on every machine, so that its comparisons of one path with another (1e-5, the
# exported bundle against ``predict``) hold wherever it runs; tests/test_precision.py tests bf16 where the CPU has it.
# (TOPTUNE_PRECISION=auto in the environment runs the whole suite with this machine's default instead.)
os.environ.setdefault("TOPTUNE_PRECISION", "f32")


def copy_subset(src: Path, dest: Path, per_class: int, classes=None, skip: int = 0) -> Path:
    """Copy ``per_class`` photos of each class folder of ``src`` to ``dest``: the first ones, after ``skip``."""
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        if classes is not None and class_dir.name not in classes:
            continue
        (dest / class_dir.name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(class_dir.glob("*.jpg"))[skip:skip + per_class]:
            shutil.copy2(photo, dest / class_dir.name / photo.name)
    return dest


@pytest.fixture(scope="session", autouse=True)
def shared_graphs(tmp_path_factory) -> Iterator[Path]:
    """One folder of exported backbone graphs for the whole session (``TOPTUNE_GRAPHS``, inherited by the command
    lines and servers the tests start): every data folder would otherwise export and check each graph again (a
    torch.onnx export and a PyTorch model load, seconds each). Tests of the export itself set a folder of their own."""
    folder = tmp_path_factory.mktemp("graphs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOPTUNE_GRAPHS", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def toptune_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty data directory (runs, cache, downloads)."""
    home = tmp_path / "toptune_home"
    monkeypatch.setenv("TOPTUNE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def demo_dataset() -> Path:
    assert (DEMO_DATASET / "healthy").is_dir(), "the demo dataset is missing from the repository"
    return DEMO_DATASET


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """20 real photos per class (60 in all), copied from the demo dataset. Do not modify it."""
    return copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("small") / "beans", 20)


@pytest.fixture(scope="session")
def lite0_extractor():
    """One loaded tf_efficientnet_lite0 feature extractor (real offline ImageNet weights) for the session."""
    from toptune_core.features.extractor import FeatureExtractor

    # one view at lite0's own 224 px: the near-duplicate check's reference, so a run with it makes one cache entry
    extractor = FeatureExtractor("tf_efficientnet_lite0", views="1", resolution=224)
    _ = extractor.model
    return extractor


@pytest.fixture(scope="session")
def demo_lite0_cache(tmp_path_factory, lite0_extractor) -> Path:
    """A feature-cache folder holding the demo dataset's features with ``lite0_extractor`` (also the near-duplicate
    check's reference), extracted once for the session; ``seed_cache`` copies it into a test's cache, where a run on
    the demo dataset with that extractor is then a cache hit."""
    from toptune_core.data.dataset import load_dataset
    from toptune_core.features.cache import FeatureCache, get_features

    root = tmp_path_factory.mktemp("demo_lite0_cache")
    get_features(load_dataset(DEMO_DATASET), lite0_extractor, FeatureCache(root))
    return root


def seed_cache(cache: Path, features_dir: Path) -> Path:
    """Copy the entries of the cache folder ``cache`` (e.g. ``demo_lite0_cache``) into ``features_dir``."""
    shutil.copytree(cache, features_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lock"))
    return features_dir


@pytest.fixture
def subprocess_env(toptune_home) -> dict:
    env = dict(os.environ)
    env["TOPTUNE_HOME"] = str(toptune_home)
    env["PYTHONPATH"] = str(REPO)
    return env
