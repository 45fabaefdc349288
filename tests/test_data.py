"""Dataset layouts (ImageFolder and Eden), fingerprints and the train/test split."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from toptune_core.data.dataset import eden_label, is_eden_folder, load_dataset
from toptune_core.data.split import stratified_split
from toptune_core.errors import DatasetError


def test_demo_dataset_is_imagefolder(demo_dataset):
    ds = load_dataset(demo_dataset)
    assert ds.layout == "imagefolder"
    assert ds.classes == ["angular_leaf_spot", "bean_rust", "healthy"]
    assert ds.class_counts() == {"angular_leaf_spot": 100, "bean_rust": 100, "healthy": 100}
    # LICENSE and SOURCES.csv sit at the root, outside the class folders: not images, not counted as photos
    assert all(p.suffix == ".jpg" for p in ds.paths)


def _eden_tree(root: Path, photos: list[Path]) -> Path:
    """Eden's two folder layouts side by side, with real leaf photos."""
    old = root / "Black nightsade-220519-Weed-zz-V1-20210225102034"
    old.mkdir(parents=True)
    for i, p in enumerate(photos[:4]):
        shutil.copy(p, old / f"DSC_{i:04d}.JPG")
    (old / "metadata.txt").write_text("camera: Nikon\n")
    new = root / "Cucumber-Cucumis_sativus-Healthy-PRX-RGB-NA-20210607" / "images"
    new.mkdir(parents=True)
    for i, p in enumerate(photos[4:9]):
        shutil.copy(p, new / f"IMG_{i:04d}.jpg")
    tomato = root / "Tomato-Solanum lycopersicum-240519-Healthy-zz"  # 2023 notebooks' form
    tomato.mkdir()
    for i, p in enumerate(photos[9:12]):
        shutil.copy(p, tomato / f"DSC_{i:04d}.JPG")
    return root


def test_eden_layouts(tmp_path, small_dataset):
    photos = sorted(small_dataset.rglob("*.jpg"))
    root = _eden_tree(tmp_path / "eden_data", photos)
    ds = load_dataset(root)
    assert ds.layout == "eden"
    assert ds.classes == ["Black nightsade", "Cucumber", "Tomato"]
    assert ds.class_counts() == {"Black nightsade": 4, "Cucumber": 5, "Tomato": 3}
    assert ds.skipped == [("Black nightsade-220519-Weed-zz-V1-20210225102034/metadata.txt", "not an image file")]
    assert any("1 file(s) skipped" in w for w in ds.warnings)


def test_eden_folder_names():
    assert is_eden_folder("Black nightsade-220519-Weed-zz-V1-20210225102034")
    assert is_eden_folder("Cucumber-Cucumis_sativus-Healthy-PRX-RGB-NA-20210607")
    assert is_eden_folder("Tomato-Solanum lycopersicum-240519-Healthy-zz")
    assert not is_eden_folder("bean_rust")
    assert eden_label("Velvet leaf-220519-Weed-zz-V1-20210225104123") == "Velvet leaf"


def test_same_eden_species_from_two_dates_is_one_class(tmp_path, small_dataset):
    photos = sorted(small_dataset.rglob("*.jpg"))
    for folder, chunk in (("Tomato-240519-Healthy-zz-V1-20210225103740", photos[:3]),
                          ("Tomato-300519-Healthy-zz-V1-20210225103999", photos[3:5]),
                          ("Cotton-100619-Healthy-zz-V1-20210225102300", photos[5:8])):
        (tmp_path / folder).mkdir()
        for p in chunk:
            shutil.copy(p, tmp_path / folder / p.name)
    ds = load_dataset(tmp_path)
    assert ds.class_counts() == {"Cotton": 3, "Tomato": 5}


def test_fingerprint_changes_with_the_data(tmp_path, small_dataset):
    data = shutil.copytree(small_dataset, tmp_path / "copy")
    before = load_dataset(data).fingerprint()
    assert load_dataset(data).fingerprint() == before  # stable
    photo = sorted((data / "healthy").glob("*.jpg"))[0]
    photo.write_bytes(photo.read_bytes() + b"\0")  # one file modified
    modified = load_dataset(data).fingerprint()
    assert modified != before
    shutil.move(str(photo), data / "bean_rust" / photo.name)  # relabelled
    assert load_dataset(data).fingerprint() not in (before, modified)


def test_split_is_stratified_and_reproducible(demo_dataset):
    labels = load_dataset(demo_dataset).labels
    a = stratified_split(labels, test_size=0.25, seed=0)
    b = stratified_split(labels, test_size=0.25, seed=0)
    c = stratified_split(labels, test_size=0.25, seed=1)
    assert np.array_equal(a.test_idx, b.test_idx) and np.array_equal(a.train_idx, b.train_idx)
    assert not np.array_equal(a.test_idx, c.test_idx)
    assert set(a.train_idx).isdisjoint(a.test_idx) and len(a.train_idx) + len(a.test_idx) == 300
    assert Counter(labels[a.test_idx].tolist()) == {0: 25, 1: 25, 2: 25}
    assert a.describe() == {"method": "stratified random split, 25% held out for testing, seed 0", "kind": "random",
                            "seed": 0, "test_size": 0.25, "n_train": 225, "n_test": 75}


def test_bad_datasets_have_clear_messages(tmp_path, small_dataset):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(tmp_path / "empty")
    one = tmp_path / "one"
    shutil.copytree(small_dataset / "healthy", one / "healthy")
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset(one)
    (one / "bean_rust").mkdir()  # an empty class folder is ignored with a warning, so still one class
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset(one)
    with pytest.raises(DatasetError, match="at least 2 photos"):
        stratified_split(np.array([0, 0, 0, 1]))


def test_separate_test_folder_uses_training_classes(tmp_path, small_dataset):
    from tests.conftest import copy_subset

    train = load_dataset(small_dataset)
    test = load_dataset(copy_subset(small_dataset, tmp_path / "test", 3, classes={"healthy", "bean_rust"}),
                        classes=train.classes)
    assert test.classes == train.classes
    assert sorted(set(test.labels.tolist())) == [1, 2]
    os.makedirs(tmp_path / "test" / "maize")
    shutil.copy(train.paths[0], tmp_path / "test" / "maize" / "x.jpg")
    with pytest.raises(DatasetError, match="not in the training data: maize"):
        load_dataset(tmp_path / "test", classes=train.classes)
