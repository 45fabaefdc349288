"""The learning loop, end to end in a real browser (Debian's chromium via Playwright, against `streamlit run app.py`).

On the Data page "Check the labels" lists suspects: one is moved, one kept, one left out (the sidebar's photo count
follows the version). On Classify a bean photo is answered and "Teach the model" starts on the model's answer;
it is added to the training photos. A photo of a kind the model lacks gets "Not recognised" and no message about
the earlier photo stays on the page. That photo and four more of its kind are added as a new class, "Train again"
top-tunes the new dataset version with the model's settings, and a sixth photo of that kind gets the new class.
The runs record the versions; the new run is scored on the first run's held-out photos less the one left out;
Compare names the versions v1 and v2.

The photos of "a kind the model lacks" are faces of different people (scikit-image's LFW subset, 25x25 grey,
upscaled): distinct photos, but tiny and far from leaves, so this checks the flow through the dashboard, not how
well a model learns a real new disease from five field photos.
Screenshots of each step go to test-artifacts/browser-versions/ (git-ignored); the README's picture of the loop
(docs/learning-loop.png) is a shrunk copy of two of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import copy_subset
from tests.streamlit_server import CHROMIUM, REPO, browser_page, streamlit_server
from tests.test_versions import face_photos
from toptune_core.config import DEMO_DATASET

ARTIFACTS = REPO / "test-artifacts" / "browser-versions"
LEAF = sorted((DEMO_DATASET / "bean_rust").glob("*.jpg"))[60]  # a bean photo the first model did not see

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (install Debian's chromium: `make browser`)")


@pytest.fixture
def first_model(toptune_home, tmp_path) -> tuple[str, Path]:
    """A model top-tuned (one view, kernel classifier) on 20 demo photos per class, in the server's data folder,
    whose photos are the workspace's chosen dataset: (run id, its photo folder)."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache
    from toptune_core.runs.store import RunStore

    from toptune_core.workspace import Workspace

    photos = copy_subset(DEMO_DATASET, tmp_path / "beans", 20)
    run = run_toptuning(photos, views="1", classifier="kernel", store=RunStore(toptune_home),
                        cache=FeatureCache(toptune_home / "features"))
    Workspace(toptune_home).update(dataset={"kind": "folder", "path": str(photos), "label": "Folder beans (60 photos)"})
    return run.id, photos


@pytest.fixture
def server(toptune_home, first_model):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with streamlit_server(toptune_home, ARTIFACTS / "streamlit.log") as url:
        yield url


def test_the_learning_loop_in_the_browser(server, first_model, toptune_home, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from toptune_core.data.versions import DatasetVersions
    from toptune_core.runs.store import RunStore

    first_run, folder = first_model
    faces = []
    for name, data in face_photos(6):
        (tmp_path / name).write_bytes(data)
        faces.append(str(tmp_path / name))
    with sync_playwright() as pw, browser_page(pw, ARTIFACTS) as (page, shot):

        def upload(paths: list[str]) -> None:
            page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files(paths)

        def choose(label: str, option: str) -> None:
            """Pick ``option`` in the select box ``label`` (again if a rerun closed the list before the click)."""
            for attempt in range(3):
                page.get_by_role("combobox", name=label).click()
                try:
                    page.get_by_role("option", name=option).click(timeout=10_000)
                    return
                except Exception:
                    if attempt == 2:
                        raise

        def sidebar_says(text: str) -> None:
            expect(page.get_by_test_id("stSidebar").get_by_text(text)).to_be_visible()

        page.goto(f"{server}/data")
        expect(page.get_by_role("heading", name="1 · Data")).to_be_visible(timeout=120_000)
        sidebar_says("Folder beans · 60 photos")
        page.get_by_role("button", name="Check the labels").click()
        expect(page.get_by_text(re.compile(r"\d+ photos to check"))).to_be_visible(timeout=300_000)
        edit_list = DatasetVersions.open(toptune_home, folder)
        for n, (action, edit) in enumerate((("Move", "moved"), ("Keep as it is", "kept"),
                                            ("Leave out", "left out")), start=1):
            for attempt in range(3):  # a click while the page is still redrawing can be lost: click again
                if len(edit_list.edits) < n:
                    page.get_by_role("button", name=re.compile(rf"(^|\s){action}$")).first.click()
                try:
                    expect(page.get_by_text(re.compile(rf"^#{n} · {edit} "))).to_be_visible(timeout=20_000)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            assert [e.kind for e in edit_list.edits] == ["move", "keep", "leave_out"][:n]
            if n == 1:
                shot("suspects")
        expect(page.get_by_text(re.compile(r"Version v2 \(not trained on yet\)"))).to_be_visible()
        sidebar_says("Folder beans · 59 photos (your version v2)")
        shot("edited")

        page.goto(f"{server}/classify")
        expect(page.get_by_role("heading", name="6 · Classify a photo")).to_be_visible(timeout=120_000)
        upload([str(LEAF)])
        expect(page.get_by_test_id("stMetric").filter(has_text="Confidence")).to_be_visible()
        answer = page.locator("h3").first.inner_text().strip()
        assert answer in ("angular_leaf_spot", "bean_rust", "healthy"), answer
        class_box = page.get_by_role("combobox", name="Their class")
        expect(class_box).to_match_aria_snapshot(f"- combobox /Their class.*/: /.*{answer}.*/")
        page.get_by_role("button", name=f"Add to the training photos as {answer}").click()
        expect(page.get_by_text(f"Added 1 photo(s) as {answer}.")).to_be_visible()
        sidebar_says("Folder beans · 60 photos (your version v2)")
        shot("leaf-added")

        page.get_by_test_id("stFileChipDeleteBtn").first.click()  # the leaf goes, a face comes
        expect(page.get_by_role("heading", name="Teach the model")).to_have_count(0)
        upload(faces[:1])  # a new photo: nothing said about the leaf stays
        expect(page.locator("h3").filter(has_text="Not recognised")).to_have_count(1)
        expect(page.get_by_text(re.compile(r"^Added \d+ photo"))).to_have_count(0)
        expect(class_box).not_to_match_aria_snapshot(f"- combobox /Their class.*/: /.*{answer}.*/")  # no choice
        shot("face-not-recognised")

        page.reload()  # a fresh uploader: that photo and four more of its kind
        upload(faces[:5])
        expect(page.locator("h3").filter(has_text="Not recognised")).to_have_count(1)
        expect(page.get_by_test_id("stAlertContentWarning").filter(has_text=re.compile("^Not recognised$"))
               ).to_have_count(5)  # each photo's verdict: the page has settled
        choose("Their class", "A new class…")
        page.get_by_role("textbox", name="Name of the new class").fill("face")
        page.get_by_role("textbox", name="Name of the new class").press("Enter")
        page.get_by_role("button", name="Add to the training photos as face").click()
        expect(page.get_by_text("Added 5 photo(s) as face.")).to_be_visible()
        shot("added")

        page.get_by_role("button", name="Train again").click()
        expect(page.get_by_text(re.compile(r"^Trained again: run"))).to_be_visible(timeout=180_000)
        expect(page.get_by_text(re.compile(r"on version v2 \(\+6 photos, 1 moved, 1 left out since the previous "
                                           r"run"))).to_be_visible()
        shot("trained-again")
        page.get_by_role("button", name="Use the new model").click()
        new_run = RunStore(toptune_home).list()[0]
        expect(page.get_by_role("combobox", name=re.compile("^Model"))).to_match_aria_snapshot(
            f'- combobox /Model.*/: /{new_run.id} · .*/')

        for _ in range(5):
            page.get_by_test_id("stFileChipDeleteBtn").first.click()
        expect(page.get_by_role("heading", name="Teach the model")).to_have_count(0)
        upload(faces[5:6])  # a sixth face, on the page that taught the model: the new model's answer only
        expect(page.locator("h3").filter(has_text=re.compile(r"^face$"))).to_have_count(1)
        expect(page.get_by_test_id("stMetric").filter(has_text="Confidence")).to_be_visible()
        expect(page.get_by_text(re.compile(r"^(Added \d+ photo|Trained again)"))).to_have_count(0)
        # its evidence: the faces the user added, named as theirs
        expect(page.get_by_text(re.compile(r"your photo face_\d\.jpg, added to the training photos")).first
               ).to_be_visible()
        shot("sixth-face-recognised")
        assert page.get_by_test_id("stException").count() == 0, "no traceback anywhere"

        page.goto(f"{server}/compare")
        chart = page.get_by_test_id("stPlotlyChart").last
        expect(page.get_by_role("heading", name="Dataset versions")).to_be_visible(timeout=120_000)
        expect(chart.locator("g.xtick")).to_have_count(2)
        ticks = [t.strip() for t in chart.locator("g.xtick").all_text_contents()]
        assert ticks[0].startswith("v1") and ticks[1].startswith("v2"), ticks
        chart.scroll_into_view_if_needed()
        chart.screenshot(path=str(ARTIFACTS / "versions-chart.png"))
        assert page.get_by_test_id("stException").count() == 0, "no traceback anywhere"

    runs = RunStore(toptune_home).list()
    assert [r.id for r in runs][1:] == [first_run] and runs[0].status == "completed"
    version = runs[0].params["version"]
    assert version["changes"]["added"] == 6 and version["changes"]["previous"] == \
        runs[1].params["version"]["id"]
    # Scored on the same held-out photos as the first run, less the one left out; the added photos train.
    versions = DatasetVersions.open(toptune_home, folder)
    left_out = {str(folder / e.path) for e in versions.edits if e.kind == "leave_out"}
    assert len(left_out) == 1
    assert set(runs[0].split["test_files"]) == set(runs[1].split["test_files"]) - left_out
    assert "face" in runs[0].params["classes"] and runs[0].params["views"] == "1"
    assert version["id"] == DatasetVersions.open(toptune_home, folder).dataset().fingerprint()[:12]
