"""Bad and messy dataset folders: refused with one clear line, or used with every unusable file named.

A "messy phone dataset" (non-ASCII and spaces in names, the same file name in every class, hidden and
non-image files, and six unreadable photos) is run once end to end through the command line; the tests
below read that run from the run store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_subset
from toptune_core.data.dataset import load_dataset
from toptune_core.data.split import stratified_split
from toptune_core.errors import DatasetError
from toptune_core.runs.store import RunStore
from toptune_core.config import DEMO_DATASET

from .realfiles import HEIC_LEAF, LEAF, assert_one_line_error, encode, jpeg_claiming, leaf_rgb, run_cli

CLASSES = ("angular_leaf_spot", "bean_rust", "healthy")


def photos(cls: str, n: int) -> list[Path]:
    return sorted((DEMO_DATASET / cls).glob("*.jpg"))[:n]


# --- refused with one line -------------------------------------------------------------------------------

def _make_bad(kind: str, tmp: Path, small_dataset: Path) -> tuple[Path, str]:
    root = tmp / kind
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "empty_folder":
        root.mkdir()
        return root, "has no class folders"
    if kind == "only_hidden_and_junk":
        (root / ".git").mkdir(parents=True)
        (root / "__MACOSX" / "healthy").mkdir(parents=True)
        (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        return root, "has no class folders"
    if kind == "one_class":
        shutil.copytree(small_dataset / "healthy", root / "healthy")
        (root / "bean_rust").mkdir()  # an empty second class does not count
        return root, "only one class ('healthy')"
    if kind == "no_images_only_documents":
        for c in CLASSES:
            (root / c).mkdir(parents=True)
            (root / c / "notes.txt").write_text("field notes")
            shutil.copy(HEIC_LEAF, root / c / "IMG_0001.HEIC")
        return root, "No images found"
    if kind == "photos_without_class_folders":
        root.mkdir()
        for p in photos("healthy", 3):
            shutil.copy(p, root / p.name)
        return root, "has no class folders"
    if kind == "zip_instead_of_folder":
        root.mkdir()
        (root / "beans.zip").write_bytes(b"PK\x05\x06" + bytes(18))
        return root / "beans.zip", "is a file, not a folder"
    if kind == "missing_folder":
        return root, "does not exist"
    raise AssertionError(kind)


BAD_KINDS = ["empty_folder", "only_hidden_and_junk", "one_class", "no_images_only_documents",
             "photos_without_class_folders", "zip_instead_of_folder", "missing_folder"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unusable_dataset_folder_is_one_clear_line(kind: str, tmp_path: Path, small_dataset: Path) -> None:
    root, expect = _make_bad(kind, tmp_path, small_dataset)
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_unusable_dataset_folders_on_the_command_line(tmp_path: Path, small_dataset: Path, toptune_home: Path) -> None:
    """Each exits with status 2 and one ``error:`` line, before any model is loaded; no run is recorded.

    (A missing folder, one class and no images are run through the command line in tests/test_toptuning.py.)
    """
    for kind in ("empty_folder", "photos_without_class_folders", "zip_instead_of_folder"):
        root, expect = _make_bad(kind, tmp_path / "cli", small_dataset)
        result = run_cli(["toptune", "--data", str(root)], toptune_home, timeout=120)
        assert result.returncode == 2, (kind, result.stderr)
        assert_one_line_error(result, expect)
    assert RunStore(toptune_home).list() == []


def test_class_with_a_single_photo_fails_cleanly_and_is_recorded(tmp_path: Path, small_dataset: Path,
                                                                  toptune_home: Path) -> None:
    data = copy_subset(small_dataset, tmp_path / "beans", 4, classes={"healthy", "bean_rust"})
    (data / "angular_leaf_spot").mkdir()
    shutil.copy(photos("angular_leaf_spot", 1)[0], data / "angular_leaf_spot")
    assert load_dataset(data).class_counts()["angular_leaf_spot"] == 1
    assert any("Very few photos" in w and "angular_leaf_spot" in w for w in load_dataset(data).warnings)
    result = run_cli(["toptune", "--data", str(data)], toptune_home)
    assert result.returncode == 2
    assert_one_line_error(result, "Each class needs at least 2 photos")
    (run,) = RunStore(toptune_home).list()
    assert run.status == "failed" and "at least 2 photos" in run.error


# --- big and messy folders are read ---------------------------------------------------------------------

def test_classes_with_thousands_of_files(tmp_path: Path) -> None:
    """2 x 2,500 photos (hard links to real ones): every one counted, stable fingerprint, stratified split."""
    root = tmp_path / "many"
    for cls, n in (("healthy", 2500), ("bean_rust", 2500)):
        (root / cls).mkdir(parents=True)
        (tmp_path / "src" / cls).mkdir(parents=True)  # links need the same file system: copy the photos first
        sources = [Path(shutil.copy(p, tmp_path / "src" / cls)) for p in photos(cls, 50)]
        for i in range(n):
            os.link(sources[i % len(sources)], root / cls / f"IMG_{i:05d}.jpg")
    ds = load_dataset(root)
    assert ds.class_counts() == {"bean_rust": 2500, "healthy": 2500} and ds.skipped == []
    assert ds.fingerprint() == load_dataset(root).fingerprint()
    split = stratified_split(ds.labels, test_size=0.25, seed=0)
    assert len(split.test_idx) == 1250 and np.bincount(ds.labels[split.test_idx]).tolist() == [625, 625]


def test_hidden_files_non_images_links_and_pipes_are_skipped_and_listed(tmp_path: Path) -> None:
    root = tmp_path / "phone dump"
    for cls in ("healthy", "bean_rust"):
        (root / cls).mkdir(parents=True)
        for p in photos(cls, 3):
            shutil.copy(p, root / cls / p.name)
    h = root / "healthy"
    (h / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (h / "._healthy_0001.jpg").write_bytes(b"\0\5\26\7AppleDouble")  # macOS resource fork: hidden
    (h / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (h / ".thumbnails").mkdir()
    shutil.copy(LEAF, h / ".thumbnails" / "thumb.jpg")  # a hidden folder's photos are not training data
    (h / "notes.txt").write_text("picked on Monday")
    (h / "IMG_0001.HEIC").write_bytes(HEIC_LEAF.read_bytes())
    (h / "dead_link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(h / "pipe.jpg")
    (h / "again").symlink_to(h, target_is_directory=True)  # a link loop back to the class folder
    (root / "bean_rust" / os.fsdecode(b"r\xe9colte.jpg")).write_bytes(LEAF.read_bytes())  # Latin-1 name
    (root / "__MACOSX" / "healthy").mkdir(parents=True)
    (root / "__MACOSX" / "healthy" / "._x.jpg").write_bytes(b"junk")
    shutil.copy(LEAF, root / "stray.jpg")

    ds = load_dataset(root)
    assert ds.class_counts() == {"bean_rust": 3, "healthy": 3}
    assert all(p.name.endswith(".jpg") and p.stat().st_size > 1000 for p in ds.paths)
    skipped = dict(ds.skipped)
    assert skipped == {
        "healthy/notes.txt": "not an image file",
        "healthy/IMG_0001.HEIC": "HEIC is not supported; export as JPEG",
        "healthy/dead_link.jpg": "broken link or unreadable file",
        "healthy/pipe.jpg": "not a regular file (a pipe, device or socket)",
        "healthy/again": "folder link to a folder already read (skipped to avoid a loop)",
        "bean_rust/r\\xe9colte.jpg": "file name is not valid UTF-8; rename the file",
        "stray.jpg": "image outside any class folder",
    }
    assert any(f"{len(skipped)} file(s) skipped" in w for w in ds.warnings)
    json.dumps(ds.skipped)  # every name can be shown and stored
    ds.fingerprint()


def test_photo_deleted_while_the_dataset_is_read_is_one_clear_line(tmp_path: Path, small_dataset: Path) -> None:
    data = copy_subset(small_dataset, tmp_path / "beans", 3)
    ds = load_dataset(data)
    ds.paths[4].unlink()  # e.g. a sync client removing a file between the scan and the fingerprint
    with pytest.raises(DatasetError, match=r"'bean_rust/.*\.jpg' disappeared or became unreadable") as info:
        ds.fingerprint()
    assert "\n" not in str(info.value)


# --- one messy dataset, run end to end -------------------------------------------------------------------

MESSY_CLASSES = ("feuille saine", "rouille du haricot", "tache angulaire — été")
UNREADABLE = {  # relative path -> what the reason must say
    "feuille saine/vide.jpg": "is empty (0 bytes)",
    "feuille saine/IMG 0007.jpg": "truncated or corrupt",
    "rouille du haricot/liste de courses.jpg": "it is a text file",
    "rouille du haricot/iPhone photo.jpg": "HEIC/HEIF format",
    "tache angulaire — été/scan géant.jpg": "10000x10000 (100 megapixels)",
    "tache angulaire — été/bande.png": "too long and thin",
}


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory) -> dict:
    """Non-ASCII and spaces in class and file names, ``IMG 0001.jpg`` in every class, junk files, and six
    unreadable photos; run once through ``python -m toptune_core toptune``."""
    from PIL import Image

    base = tmp_path_factory.mktemp("messy")
    root, home = base / "Mes photos été 2024", base / "home"
    for cls, src in zip(MESSY_CLASSES, ("healthy", "bean_rust", "angular_leaf_spot")):
        (root / cls).mkdir(parents=True)
        for i, p in enumerate(photos(src, 6)):
            name = "IMG 0001.jpg" if i == 0 else ("葉っぱ ñ.jpg" if i == 1 else f"photo {i}.jpg")
            shutil.copy(p, root / cls / name)
        (root / cls / "desktop.ini").write_text("[.ShellClassInfo]")
        (root / cls / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    bad = {
        "feuille saine/vide.jpg": b"",
        "feuille saine/IMG 0007.jpg": LEAF.read_bytes()[:3000],
        "rouille du haricot/liste de courses.jpg": b"haricots, 2 kg\n",
        "rouille du haricot/iPhone photo.jpg": HEIC_LEAF.read_bytes(),
        "tache angulaire — été/scan géant.jpg": jpeg_claiming(LEAF, 10000, 10000),
        "tache angulaire — été/bande.png": encode(Image.new("RGB", (8000, 40), "green"), "PNG"),
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    out = base / "summary.json"
    result = run_cli(["toptune", "--data", str(root), "--json", str(out)], home)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    return {"root": root, "home": home, "result": result, "summary": summary,
            "run": RunStore(home).get(summary["run_id"])}


def test_messy_dataset_run_completes_with_its_names_intact(messy_run) -> None:
    run = messy_run["run"]
    assert run.status == "completed" and run.params["classes"] == sorted(MESSY_CLASSES)
    assert run.split["n_train"] + run.split["n_test"] == 18  # 3 classes x 6 readable photos
    preds = run.predictions()
    assert set(preds["true"]) <= set(MESSY_CLASSES)
    assert all(Path(p).exists() for p in preds["path"])  # non-ASCII paths survive the CSV round trip


def test_same_file_name_in_every_class_stays_three_photos(messy_run) -> None:
    from toptune_core.features.cache import FeatureCache

    keys = [p.name for p in (messy_run["home"] / "features").iterdir() if not p.name.startswith(".")]
    assert len(keys) == 2  # the run's features and the near-duplicate check's
    for key in keys:
        entry = FeatureCache(messy_run["home"] / "features").load(key)
        same = [r for r in entry.relpaths if r.endswith("/IMG 0001.jpg")]
        assert sorted(same) == sorted(f"{c}/IMG 0001.jpg" for c in MESSY_CLASSES)
        rows = entry.full_matrix()[[entry.relpaths.index(r) for r in same]]
        assert not np.allclose(rows[0], rows[1]) and not np.allclose(rows[1], rows[2])  # three different photos


def test_unreadable_photos_are_skipped_counted_and_named(messy_run) -> None:
    run, summary, result = messy_run["run"], messy_run["summary"], messy_run["result"]
    reasons = dict(run.split["unreadable"])
    assert set(reasons) == set(UNREADABLE)
    for rel, expect in UNREADABLE.items():
        assert expect in reasons[rel], (rel, reasons[rel])
    assert summary["unreadable_images"] == 6
    assert "6 unreadable photo(s) skipped" in result.stdout
    for rel in UNREADABLE:  # the command line names each one, with its reason
        assert f"    {rel}: {reasons[rel]}" in result.stdout
    assert "Traceback" not in result.stderr


def test_predict_on_a_non_ascii_path_with_spaces(messy_run) -> None:
    photo = messy_run["root"] / "rouille du haricot" / "葉っぱ ñ.jpg"
    result = run_cli(["predict", "--run", messy_run["run"].id, str(photo)], messy_run["home"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo}: ")
    assert any(c in result.stdout for c in MESSY_CLASSES)
