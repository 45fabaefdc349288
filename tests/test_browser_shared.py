"""Shared mode end to end in a real browser (Debian's chromium, Playwright) against `streamlit run app.py` with
TOPTUNE_SHARED=1: two visitors in separate browser contexts on one server; and stopping the dashboard in the
middle of a fine-tune. Screenshots go to test-artifacts/browser-shared/ (git-ignored).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import copy_subset
from tests.streamlit_server import CHROMIUM, CHROMIUM_ARGS, REPO, streamlit_server
from toptune_core.config import DEMO_DATASET
from toptune_core.features.views import LABELS as VIEW_LABELS
from toptune_core.runs.store import RunStore

ARTIFACTS = REPO / "test-artifacts" / "browser-shared"
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (install Debian's chromium: `make browser`)")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


def token_of(page) -> str:
    return parse_qs(urlparse(page.url).query).get("v", [""])[0]


def open_page(page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).first.click()


def test_two_visitors_are_kept_apart_on_a_shared_server(toptune_home, tmp_path, artifacts):
    from playwright.sync_api import expect, sync_playwright

    roots = tmp_path / "roots"
    copy_subset(DEMO_DATASET, roots / "beans", 4)
    outside = copy_subset(DEMO_DATASET, tmp_path / "outside" / "private", 4)
    (roots / "escape").symlink_to(outside, target_is_directory=True)
    env = {"TOPTUNE_SHARED": "1", "TOPTUNE_DATA_ROOTS": str(roots), "TOPTUNE_MAX_RUNS": "1"}
    with streamlit_server(toptune_home, artifacts / "streamlit.log", env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=60_000)
        a = browser.new_context(viewport={"width": 1366, "height": 1000}).new_page()
        b = browser.new_context(viewport={"width": 1366, "height": 1000}).new_page()
        for p in (a, b):
            p.set_default_timeout(120_000)
        try:
            # Visitor A: a private link, then the demo dataset, top-tuned once.
            a.goto(url)
            expect(a.get_by_text("takes a network already trained")).to_be_visible()
            expect(a.get_by_text("Sharing the link shares the workspace")).to_be_visible()
            token_a = token_of(a)
            assert len(token_a) == 32
            a.get_by_role("button", name=re.compile("Try the demo dataset")).click()
            expect(a.get_by_role("heading", name="1 · Data")).to_be_visible()
            open_page(a, "Top-tune")
            # one view of each photo: the default views' first run is test_browser.py's (13x the work)
            a.get_by_text(VIEW_LABELS["1"], exact=True).click()
            expect(a.get_by_role("radio", name=VIEW_LABELS["1"])).to_be_checked()
            a.get_by_role("button", name=re.compile(r"Top-tune$")).click()
            expect(a.get_by_text("Trained and tested in")).to_be_visible(timeout=300_000)
            run_a = RUN_ID.search(a.get_by_text(re.compile(r"^Run \d{8}-")).inner_text()).group(0)
            assert token_of(a) == token_a, "the link keeps the token across page changes"
            a.screenshot(path=str(artifacts / "01-a-toptuned.png"), full_page=True)

            # Over a limit (one run per workspace here): one clear line, and A's result is still shown.
            a.get_by_role("button", name=re.compile(r"Top-tune$")).click()
            expect(a.get_by_text("Your workspace holds 1 run(s), the most this server keeps")).to_have_count(1)
            expect(a.get_by_text("Trained and tested in")).to_be_visible()
            a.screenshot(path=str(artifacts / "02-a-over-the-limit.png"), full_page=True)

            # Visitor B: their own empty workspace; none of A's choices or runs on any page.
            b.goto(url)
            expect(b.get_by_text("takes a network already trained")).to_be_visible()
            token_b = token_of(b)
            assert token_b and token_b != token_a
            expect(b.get_by_text("Dataset: none chosen yet")).to_be_visible()
            expect(b.get_by_text("trained model(s) so far")).to_have_count(0)
            for title, empty in [("Top-tune", "Choose a dataset first."), ("Fine-tune", "Choose a dataset first."),
                                 ("Compare", "No finished runs yet"), ("Predictions", "No finished runs yet"),
                                 ("Classify a photo", "No trained model yet")]:
                open_page(b, title)
                expect(b.get_by_text(empty)).to_be_visible()
                expect(b.get_by_text(run_a)).to_have_count(0)
                expect(b.get_by_text("(running)")).to_have_count(0)
            b.goto(f"{url}/predictions?v={token_b}&run={run_a}")  # A's run id in B's URL
            expect(b.get_by_text(f"Run '{run_a}' was not found in your workspace.")).to_be_visible()
            expect(b.get_by_text("No finished runs yet")).to_be_visible()
            assert token_of(b) == token_b
            b.screenshot(path=str(artifacts / "03-b-not-found.png"), full_page=True)

            # No way to type a server path; an allowed folder is offered and works, the link out is not offered.
            open_page(b, "Data")
            expect(b.get_by_role("heading", name="1 · Data")).to_be_visible()
            expect(b.get_by_text("Folder on this computer")).to_have_count(0)
            for source in ("Demo dataset", "Eden Library", "Upload a zip", "Folder on this server"):
                b.get_by_text(source, exact=True).click()
                expect(b.get_by_test_id("stTextInput")).to_have_count(0)
            b.get_by_test_id("stSelectbox").click()
            expect(b.get_by_role("option")).to_have_text(["roots", "roots/beans"])
            b.get_by_role("option", name="roots/beans").click()
            b.get_by_role("button", name="Use this folder").click()
            expect(b.get_by_text("Server folder roots/beans · 12 photos").first).to_be_visible()  # the sidebar
            b.screenshot(path=str(artifacts / "04-b-server-folder.png"), full_page=True)

            # A's reload keeps A's workspace: the dataset, the run; B's choice did not reach A.
            a.reload()
            expect(a.get_by_text("Trained and tested in")).to_be_visible()
            assert token_of(a) == token_a
            expect(a.get_by_text(re.compile("^Dataset: Demo"))).to_be_visible()
            open_page(a, "Predictions")
            expect(a.get_by_role("combobox", name="Run")).to_match_aria_snapshot(
                f'- combobox "Run": /{run_a} · top-tuned .*/')
            expect(a.get_by_text("expired")).to_have_count(0)
            a.screenshot(path=str(artifacts / "05-a-after-reload.png"), full_page=True)
            for p in (a, b):
                assert p.get_by_test_id("stException").count() == 0, "no traceback anywhere"
        except BaseException:
            a.screenshot(path=str(artifacts / "failure-a.png"), full_page=True)
            b.screenshot(path=str(artifacts / "failure-b.png"), full_page=True)
            raise
        finally:
            browser.close()
    runs = [r for home in (toptune_home / "visitors").iterdir() for r in RunStore(home).list()]
    assert [r.id for r in runs] == [run_a], "one run, in A's own folder"


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    """The process no longer runs (gone, or a zombie nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_stopping_the_dashboard_stops_its_fine_tune(toptune_home, artifacts):
    from playwright.sync_api import expect, sync_playwright

    procs: list = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=60_000)
        page = browser.new_page(viewport={"width": 1366, "height": 1000})
        page.set_default_timeout(120_000)  # the first visit of the Fine-tune page imports the training code
        try:
            with streamlit_server(toptune_home, artifacts / "streamlit-kill.log", procs=procs) as url:
                page.goto(url)
                page.get_by_role("button", name=re.compile("Try the demo dataset")).click()
                # The click's run switches to the Data page: wait for it, or a sidebar click made before it lands
                # is undone by that switch and the Fine-tune page never shows (the full suite's one failure).
                expect(page.get_by_role("heading", name="1 · Data")).to_be_visible()
                open_page(page, "Fine-tune")
                expect(page.get_by_role("heading", name=re.compile("3 · Fine-tune"))).to_be_visible()
                expect(page.get_by_text(re.compile("^Data: Demo"))).to_be_visible()  # its form: the dataset chosen
                page.get_by_role("button", name=re.compile("Start fine-tuning")).click()
                expect(page.get_by_text(re.compile(r"Fine-tune \d{8}-\d{6}-[0-9a-f]{4} · running"))).to_be_visible()
                (run,) = RunStore(toptune_home).list(status="running")
                procs.append(run.pid)  # stopped at the end, should the test fail
                dashboard = procs[0].pid
                assert run.pid != dashboard and _ppid(run.pid) == dashboard, "a training process of the dashboard"
                deadline = time.monotonic() + 120
                while not (run.dir / "progress.json").exists():  # it is training
                    assert time.monotonic() < deadline and not _gone(run.pid), "the fine-tune did not start"
                    time.sleep(0.5)
                os.kill(dashboard, signal.SIGKILL)  # the dashboard dies without any chance to clean up
                deadline = time.monotonic() + 20
                while not _gone(run.pid):
                    assert time.monotonic() < deadline, "the training process outlived the dashboard by 20 s"
                    time.sleep(0.2)
                stopped_after = 20 - (deadline - time.monotonic())
            print(f"training process gone {stopped_after:.1f} s after the dashboard was killed")
            stopped = RunStore(toptune_home).get(run.id)
            assert stopped.status == "interrupted", (stopped.status, stopped.error)

            # A restarted dashboard shows the run as stopped.
            with streamlit_server(toptune_home, artifacts / "streamlit-restart.log") as url:
                page.goto(f"{url}/finetune")
                expect(page.get_by_text("stopped when the program running it stopped")).to_be_visible()
                expect(page.get_by_role("button", name=re.compile("Start fine-tuning"))).to_be_visible()
                page.screenshot(path=str(artifacts / "06-restarted-after-kill.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(artifacts / "failure-kill.png"), full_page=True)
            raise
        finally:
            browser.close()
            for pid in procs[1:]:
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)
