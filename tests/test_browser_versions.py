"""Teach it, end to end in a real browser (Debian's chromium via Playwright, against `streamlit run app.py`).

A model trained on bean leaves is shown a photo of a kind it lacks: "Not recognised". That photo and four more
of its kind are added as a new class on the Classify page, "Train again" top-tunes the new dataset version with
the model's settings, and a sixth photo of that kind gets the new class. The run records the version.

The photos of "a kind the model lacks" are faces of different people (scikit-image's LFW subset, 25x25 grey,
upscaled): distinct photos, but tiny and far from leaves, so this checks the flow through the dashboard, not how
well a model learns a real new disease from five field photos.
Screenshots of each step go to test-artifacts/browser-versions/ (git-ignored).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import copy_subset
from tests.streamlit_server import CHROMIUM, CHROMIUM_ARGS, REPO, streamlit_server
from tests.test_versions import face_photos
from toptune_core.config import DEMO_DATASET

ARTIFACTS = REPO / "test-artifacts" / "browser-versions"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (install Debian's chromium: `make browser`)")


@pytest.fixture
def first_model(toptune_home, tmp_path) -> tuple[str, Path]:
    """A model top-tuned (one view, kernel classifier) on 20 demo photos per class, in the server's data folder:
    (run id, its photo folder)."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache
    from toptune_core.runs.store import RunStore

    photos = copy_subset(DEMO_DATASET, tmp_path / "beans", 20)
    run = run_toptuning(photos, views="1", classifier="kernel", store=RunStore(toptune_home),
                        cache=FeatureCache(toptune_home / "features"))
    return run.id, photos


@pytest.fixture
def server(toptune_home, first_model):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with streamlit_server(toptune_home, ARTIFACTS / "streamlit.log") as url:
        yield url


def test_five_photos_of_a_new_kind_teach_the_model_a_new_class(server, first_model, toptune_home, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from toptune_core.data.versions import DatasetVersions
    from toptune_core.runs.store import RunStore

    first_run, folder = first_model
    faces = []
    for name, data in face_photos(6):
        (tmp_path / name).write_bytes(data)
        faces.append(str(tmp_path / name))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        step = 0

        def shot(name: str) -> None:
            nonlocal step
            step += 1
            page.screenshot(path=str(ARTIFACTS / f"{step:02d}-{name}.png"), full_page=True)

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

        try:
            page.goto(f"{server}/classify")
            expect(page.get_by_role("heading", name="6 · Classify a photo")).to_be_visible(timeout=120_000)
            upload(faces[:1])
            expect(page.locator("h3").filter(has_text="Not recognised")).to_have_count(1)
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
            expect(page.get_by_text(re.compile(r"\+5 photos since the previous run"))).to_be_visible()
            shot("trained-again")
            page.get_by_role("button", name="Use the new model").click()
            new_run = RunStore(toptune_home).list()[0]
            expect(page.get_by_role("combobox", name=re.compile("^Model"))).to_match_aria_snapshot(
                f'- combobox /Model.*/: /{new_run.id} · .*/')

            page.goto(f"{server}/classify?run={new_run.id}")  # a fresh page with the new model: a sixth face
            expect(page.get_by_role("heading", name="6 · Classify a photo")).to_be_visible()
            upload(faces[5:6])
            expect(page.locator("h3").filter(has_text=re.compile(r"^face$"))).to_have_count(1)
            expect(page.get_by_test_id("stMetric").filter(has_text="Confidence")).to_be_visible()
            shot("sixth-face-recognised")
            assert page.get_by_test_id("stException").count() == 0, "no traceback anywhere"
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    runs = RunStore(toptune_home).list()
    assert [r.id for r in runs][1:] == [first_run] and runs[0].status == "completed"
    version = runs[0].params["version"]
    assert version["changes"]["added"] == 5 and version["changes"]["previous"] == \
        runs[1].params["version"]["id"]
    assert "face" in runs[0].params["classes"] and runs[0].params["views"] == "1"
    assert version["id"] == DatasetVersions.open(toptune_home, folder).dataset().fingerprint()[:12]
