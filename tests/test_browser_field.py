"""The offline diagnosis page in Debian's chromium: served by the dashboard (Streamlit's static serving) and, from
the export zip, by ``python -m http.server``; loaded once, then with the network off it diagnoses a bean photo and a
photo that is not a leaf exactly as ``predict --json`` does (same class, same "not recognised", probabilities
within 1e-3). Real run, real server, real browser, real onnxruntime-web."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.field_run import field_run, held_out_photos  # noqa: F401 - the session's run
from tests.streamlit_server import CHROMIUM, REPO, browser_page, free_port, streamlit_server
from toptune_core.bench.field import diagnose, offline_page
from toptune_core.portable import offline

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
              pytest.mark.skipif(not offline.ort_available(), reason="onnxruntime-web is not installed (npm ci)")]


def _photos(tmp_path: Path) -> list[str]:
    import skimage.data

    coffee = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(coffee, quality=92)
    return [str(held_out_photos("bean_rust", 1)[0]), str(held_out_photos("angular_leaf_spot", 1)[0]), str(coffee)]


def _predict_json(run, photos: list[str], tmp_path: Path) -> list[dict]:
    from toptune_core.cli.main import main

    out = tmp_path / "predict.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOPTUNE_HOME", str(run.home))
        assert main(["predict", "--run", run.run_id, "--json", str(out), *photos]) == 0
    return json.loads(out.read_text())["predictions"]


def diagnose_offline(url: str, photos: list[str], views: str = "dihedral", shots: Path | None = None) -> list[dict]:
    """Open the page at ``url``, wait until it is kept for offline use, turn the network off, reload, and diagnose
    each photo through the file input; the ``#result`` JSON of each."""
    results = []
    with offline_page(url, timeout_ms=180_000) as (_, page, _ms):
        page.check(f"input[name=views][value='{views}']")
        for i, photo in enumerate(photos):
            results.append(diagnose(page, photo, timeout_ms=180_000))
            if shots is not None:
                page.screenshot(path=str(shots / f"offline-page-{i}.png"), full_page=True)
    return results


def _assert_same(page: list[dict], predicted: list[dict]) -> None:
    assert len(page) == len(predicted)
    for ours, theirs in zip(page, predicted):
        assert ours["unknown"] == theirs["unknown"]
        assert ours["top"][0][0] == theirs["top"][0][0]
        pa, pb = dict(ours["top"]), dict(theirs["top"])
        assert pa.keys() == pb.keys() and max(abs(pa[c] - pb[c]) for c in pa) <= 1e-3
        assert ours["milliseconds"] > 0
    assert not page[0]["unknown"] and page[-1]["unknown"]  # the bean leaf is recognised, the coffee cup is not


def test_the_dashboard_serves_a_runs_offline_page_that_diagnoses_offline(field_run, tmp_path):  # noqa: F811
    photos = _photos(tmp_path)
    expected = _predict_json(field_run, photos, tmp_path)
    folder = offline.publish(field_run.run_id, store=field_run.store(), settings=field_run.settings)
    try:
        name = offline.page_name(field_run.run_id, field_run.store())
        assert folder == offline.STATIC_ROOT / offline.PUBLISHED / name and name.startswith(field_run.run_id + "-")
        with streamlit_server(field_run.home, tmp_path / "streamlit.log") as url:
            with pytest.raises(urllib.error.HTTPError) as missing:  # not at the run id alone: it needs the token
                urllib.request.urlopen(f"{url}/app/static/{offline.PUBLISHED}/{field_run.run_id}/index.html")
            assert missing.value.code == 404
            got = diagnose_offline(url + offline.published_path(name), photos)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _assert_same(got, expected)


def test_the_export_zips_offline_folder_served_by_http_server_does_the_same(field_run, tmp_path):  # noqa: F811
    from toptune_core.portable.export import export_run

    photos = _photos(tmp_path)
    expected = _predict_json(field_run, photos, tmp_path)
    zipped = export_run(field_run.run_id, tmp_path / "model.zip", store=field_run.store(), settings=field_run.settings)
    with zipfile.ZipFile(zipped) as z:
        z.extractall(tmp_path / "unzipped")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=tmp_path / "unzipped" / "offline", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/files.json", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.2)
        shots = REPO / "test-artifacts"
        shots.mkdir(exist_ok=True)
        got = diagnose_offline(f"http://127.0.0.1:{port}/index.html", photos, shots=shots)
    finally:
        server.terminate()
        server.wait(10)
    _assert_same(got, expected)


def test_classify_shows_the_map_beside_the_photo_and_the_offline_pages_link_and_qr(field_run, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    name = offline.page_name(field_run.run_id, field_run.store())
    folder = offline.published_folder(name)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with streamlit_server(field_run.home, tmp_path / "streamlit.log") as url, sync_playwright() as p, \
                browser_page(p, tmp_path, timeout_ms=120_000) as (page, _):
            page.goto(f"{url}/classify?run={field_run.run_id}")
            page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files(
                str(held_out_photos("bean_rust", 1)[0]))
            expect(page.get_by_text("What the model saw (centre crop)")).to_be_visible()
            expect(page.get_by_text(re.compile(r"^Where it sees "))).to_be_visible()
            page.get_by_text("Offline page for the field").click()
            page.get_by_role("button", name="Make the offline page").click()
            link = page.get_by_role("link", name="Open the offline page")
            expect(link).to_be_visible()
            expect(page.get_by_text("Scan with the phone's camera")).to_be_visible()
            href = link.get_attribute("href")
            assert href == url + offline.published_path(name)
            with urllib.request.urlopen(href, timeout=30) as resp:
                assert resp.status == 200 and b'capture="environment"' in resp.read()
            page.screenshot(path=str(REPO / "test-artifacts" / "classify-map-and-offline-link.png"), full_page=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_predictions_shows_one_held_out_photos_map_for_its_predicted_and_true_class(field_run, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    with streamlit_server(field_run.home, tmp_path / "streamlit.log") as url, sync_playwright() as p, \
            browser_page(p, tmp_path, timeout_ms=120_000) as (page, _):
        page.goto(f"{url}/predictions?run={field_run.run_id}")
        expect(page.get_by_text(re.compile(r"photo\(s\), least confident first"))).to_be_visible()  # page drawn
        page.get_by_text("Where on the leaf: one photo's map").click()
        options = page.get_by_role("option")
        for _ in range(6):  # a rerun still drawing the page closes an open list: wait for it, open the list again
            expect(page.get_by_test_id("stStatusWidgetRunningIcon")).to_have_count(0)
            page.get_by_role("combobox", name="Photo to map", exact=True).click()
            try:
                expect(options.first).to_be_visible(timeout=5_000)
                break
            except AssertionError:
                continue
        page.keyboard.press("Enter")  # the first photo, focused in the open list (which may open below the page)
        expect(page.get_by_text("What the model saw (centre crop)")).to_be_visible()
        expect(page.get_by_text(re.compile(r"^Where it sees ")).first).to_be_visible()
