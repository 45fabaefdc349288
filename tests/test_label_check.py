"""Photos to check (``trust.labels``, ``check-labels``): wrong labels planted in a copy of the demo set are found.

One module-scoped copy of the demo set (300 real photos) gets 15 wrong labels: 5 photos of each class moved into
the next class's folder (seeded). Its features (tf_efficientnet_lite0, the default view set) are extracted once
into a module-scoped data folder that every test here reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from toptune_core.cli.main import main
from toptune_core.config import DEMO_DATASET, Settings

PLANTED_PER_CLASS = 5


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(dataset folder, {relpath of a planted photo: its true class}): 5 photos of each class moved into the
    next class's folder, chosen with a seeded generator."""
    root = tmp_path_factory.mktemp("planted") / "beans"
    shutil.copytree(DEMO_DATASET, root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    rng = np.random.default_rng(18)
    truth = {}
    for i, cls in enumerate(classes):
        photos = sorted((root / cls).glob("*.jpg"))
        wrong = classes[(i + 1) % len(classes)]
        for k in rng.choice(len(photos), PLANTED_PER_CLASS, replace=False):
            photos[k].rename(root / wrong / photos[k].name)
            truth[f"{wrong}/{photos[k].name}"] = cls
    return root, truth


@pytest.fixture(scope="module")
def label_home(tmp_path_factory) -> Path:
    """A data folder shared by this module's tests (the planted set's features are extracted once)."""
    return tmp_path_factory.mktemp("label_home")


@pytest.fixture(scope="module")
def checked(planted, label_home, tmp_path_factory) -> dict:
    """``check-labels`` run once on the planted set through the command line's entry function: its JSON."""
    out = tmp_path_factory.mktemp("out") / "suspects.json"
    settings = Settings.from_env({**os.environ, "TOPTUNE_HOME": str(label_home)})
    assert main(["check-labels", "--data", str(planted[0]), "--json", str(out)], settings=settings) == 0
    return json.loads(out.read_text())


def test_planted_wrong_labels_are_among_the_first_suspects(planted, checked, capsys):
    _, truth = planted
    first = checked["suspects"][:30]
    found = [s for s in first if s["path"] in truth]
    assert len(found) >= 12, f"only {len(found)} of the 15 planted labels in the first 30: {first}"
    right = [s for s in found if s["suggested"] == truth[s["path"]]]
    print(f"{len(found)} of the 15 planted among the first 30 suspects, the true class suggested for {len(right)}")
    assert len(right) >= 10, f"the true class suggested for only {len(right)}: {found}"


def test_the_json_lists_suspects_most_suspect_first(planted, checked):
    root, _ = planted
    suspects = checked["suspects"]
    assert suspects and all(set(s) == {"path", "given", "suggested", "score"} for s in suspects)
    scores = [s["score"] for s in suspects]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[-1] and scores[0] <= 1
    for s in suspects:
        assert (root / s["path"]).is_file() and s["path"].split("/")[0] == s["given"] != s["suggested"]
    assert len({s["path"] for s in suspects}) == len(suspects)
    assert checked["n_checked"] == 300 and checked["views"] == "dihedral"
    assert 0 < checked["n_likely_wrong"] <= len(suspects)


def test_the_table_and_a_second_run_from_the_cache(planted, checked, label_home, capsys):
    settings = Settings.from_env({**os.environ, "TOPTUNE_HOME": str(label_home)})
    assert main(["check-labels", "--data", str(planted[0]), "--top", "5"], settings=settings) == 0
    out = capsys.readouterr().out
    assert "features from the cache" in out
    first = checked["suspects"][0]
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "score"])
    row = ["1", f"{first['score']:.3f}", first["given"], first["suggested"], first["path"]]
    assert lines[header + 1].split() == row
    assert f"and {len(checked['suspects']) - 5} more" in out


def test_bad_input_gets_one_line(tmp_path, capsys):
    (tmp_path / "only" / "healthy").mkdir(parents=True)
    shutil.copy(next((DEMO_DATASET / "healthy").glob("*.jpg")), tmp_path / "only" / "healthy")
    (tmp_path / "empty").mkdir()
    for folder, words in [(tmp_path / "only", "only one class"), (tmp_path / "empty", "no class folders"),
                          (tmp_path / "missing", "does not exist")]:
        assert main(["check-labels", "--data", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def _planted_features(planted, label_home) -> tuple[np.ndarray, np.ndarray]:
    from toptune_core.data.dataset import load_dataset
    from toptune_core.features.cache import FeatureCache, get_features
    from toptune_core.features.extractor import FeatureExtractor

    ds = load_dataset(planted[0])
    fs = get_features(ds, FeatureExtractor("tf_efficientnet_lite0"), FeatureCache(label_home / "features"))
    assert fs.cache_hit
    return fs.entry.features, ds.labels


def test_no_photo_is_split_across_folds(planted, checked, label_home):
    """With random labels nothing can be learnt: out-of-fold accuracy is chance, unless a photo's views (or a
    near-twin) sit in the training folds of the photo itself. The same features cut into views-as-photos, or
    into twins without their group, show that the check can tell."""
    from toptune_core.features.views import flatten
    from toptune_core.model_selection import group_folds
    from toptune_core.trust.labels import out_of_fold_proba

    F, _ = _planted_features(planted, label_home)
    assert F.ndim == 3 and F.shape[1] == 8
    y = np.random.default_rng(0).integers(0, 3, len(F))
    accuracy = lambda P, labels: float((P.argmax(axis=1) == labels).mean())  # noqa: E731
    assert accuracy(out_of_fold_proba(F, y, seed=0), y) < 0.45
    rows, rows_y, rows_group = flatten(F, y)
    assert accuracy(out_of_fold_proba(rows, rows_y, seed=0), rows_y) > 0.65  # views as separate photos leak
    assert accuracy(out_of_fold_proba(rows, rows_y, rows_group, seed=0), rows_y) < 0.45

    twins = np.concatenate([F[:150], F[:150] * 1.001])
    twin_y, group = np.tile(y[:150], 2), np.tile(np.arange(150), 2)
    assert accuracy(out_of_fold_proba(twins, twin_y, group, seed=0), twin_y) < 0.45
    assert accuracy(out_of_fold_proba(twins, twin_y, seed=0), twin_y) > 0.6  # twins apart leak

    for train, test in group_folds(twin_y, group, seed=0):  # the folds out_of_fold_proba uses
        assert not set(group[train]) & set(group[test])


def test_nearest_photos_of_the_given_and_the_suggested_class(planted, checked, label_home):
    """The evidence beside a suspect: its nearest photos filed under each class; for a planted photo those of
    its true (suggested) class look more like it than those of the wrong folder it was put in."""
    from toptune_core.data.dataset import load_dataset
    from toptune_core.features.cache import FeatureCache
    from toptune_core.trust.labels import check_labels

    root, truth = planted
    result = check_labels(load_dataset(root), cache=FeatureCache(label_home / "features"))
    assert result.cache_hit and [s.as_dict() for s in result.suspects] == checked["suspects"]
    closer = 0
    caught = [s for s in result.suspects[:30] if truth.get(s.path) == s.suggested]
    for s in caught:
        near = {cls: result.nearest(s.path, cls, k=3) for cls in (s.given, s.suggested)}
        for cls, photos in near.items():
            assert len(photos) == 3 and all(p.split("/")[0] == cls and p != s.path for p, _ in photos)
            sims = [sim for _, sim in photos]
            assert sims == sorted(sims, reverse=True) and all(-1 <= x <= 1 for x in sims)
        closer += np.mean([x for _, x in near[s.suggested]]) > np.mean([x for _, x in near[s.given]])
    print(f"{closer} of {len(caught)} caught planted photos are closer to their true class's photos")
    assert len(caught) >= 10 and closer >= 0.8 * len(caught)


def test_data_page_photos_to_check(planted, checked, label_home, monkeypatch):
    """The Data page's panel on the planted set: the suspects show with their evidence; "Leave out", "Keep as it
    is" and "Move" edit the dataset version (never the folder) and the photo leaves the list; a new check on the
    new version does not show the reviewed photos again."""
    from tests.test_app import button, goto, new_app, no_problems, wait_for_job
    from toptune_core.data.versions import DatasetVersions

    root, truth = planted
    monkeypatch.setenv("TOPTUNE_HOME", str(label_home))
    files_before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    at = goto(new_app(), "data")
    at.radio(key="data_source").set_value("Folder on this computer").run()
    at.text_input(key="folder_path").input(str(root)).run()
    button(at, "Use this folder").click().run()
    button(at, "Check the labels").click().run()
    wait_for_job(at)
    no_problems(at)
    first = [s["path"] for s in checked["suspects"][:3]]
    assert any(f"{len(checked['suspects'])} photos to check" in m.value for m in at.markdown)
    for path in first:
        assert any(b.key == f"label_leave_out:{path}" for b in at.button), path
    captions = [c.value for c in at.caption]
    assert any("Most alike among the photos filed under" in c for c in captions)

    versions = DatasetVersions.open(label_home, root)
    at.button(key=f"label_leave_out:{first[0]}").click().run()
    no_problems(at)
    assert [(e.kind, e.path) for e in versions.edits] == [("leave_out", first[0])]
    assert first[0] not in versions.dataset().relpaths
    assert not any(b.key == f"label_leave_out:{first[0]}" for b in at.button)

    at.button(key=f"label_keep:{first[1]}").click().run()
    at.button(key=f"label_move:{first[2]}").click().run()  # to the suggested class, the default
    no_problems(at)
    assert [(e.kind, e.path, e.to) for e in versions.edits][1:] == [
        ("keep", first[1], None), ("move", first[2], checked["suspects"][2]["suggested"])]
    assert not any(b.key.startswith(tuple(f"label_keep:{p}" for p in first)) for b in at.button if b.key)
    assert any(f"{len(checked['suspects']) - 3} photos to check" in m.value for m in at.markdown)

    button(at, "Check again").click().run()
    wait_for_job(at)
    no_problems(at)
    shown = {b.key.split(":", 1)[1] for b in at.button if b.key and b.key.startswith("label_leave_out:")}
    assert shown and not shown & set(first)
    # The new list's size is explained: against cleanlab's estimate, and against the previous list.
    assert any("Checked again on your corrected version" in c.value and "were on the previous list" in c.value
               for c in at.caption)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == files_before

    out = label_home / "after_edits.json"  # the command line reads the same workspace's version
    assert main(["check-labels", "--data", str(root), "--json", str(out)],
                settings=Settings.from_env({**os.environ, "TOPTUNE_HOME": str(label_home)})) == 0
    after = json.loads(out.read_text())
    assert after["n_checked"] == 299 and not {s["path"] for s in after["suspects"]} & set(first)
