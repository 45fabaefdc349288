"""The dashboard, page by page, through streamlit's AppTest (no browser), with real photos and real weights.

One module-scoped data directory holds the main flow's result: the demo
dataset chosen from the home page and top-tuned with tf_efficientnet_lite0
through the Top-tune page (one view of each photo: ``ONE_VIEW``). The Compare, Predictions and Classify tests read
that run. Tests that need an empty data directory or smaller data make their
own. Background jobs are followed by rerunning the page, as the browser's
timer fragment would.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pages._charts import FRONT_NAME
from tests.conftest import copy_subset
from toptune_core.errors import Cancelled, DatasetError
from toptune_core.jobs.thread import JobRegistry
from toptune_core.progress import Progress
from toptune_core.runs.store import RunStore
from toptune_core.config import DEMO_DATASET

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGE_TIMEOUT = 120  # seconds for one script run (the first one imports torch and loads a model)
JOB_TIMEOUT = 300


# --- helpers -----------------------------------------------------------------------------------------

def new_app() -> AppTest:
    """A new browser tab (a new session) on the home page."""
    return AppTest.from_file(str(APP), default_timeout=PAGE_TIMEOUT).run()


def goto(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"pages/{page}.py").run()


#: The Top-tune page's default views (8 at 288 px) cost 13 backbone passes' worth per photo: the flows here choose one
#: view. The defaults are the browser test's (test_browser.py) and the command line's (test_toptuning.py).
ONE_VIEW = "1"


def toptune_page(at: AppTest) -> AppTest:
    """The Top-tune page, with one view of each photo chosen."""
    goto(at, "toptune")
    at.radio(key="tt_views").set_value(ONE_VIEW).run()
    return at


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def has_button(at: AppTest, label: str) -> bool:
    return any(b.label == label for b in at.button)


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def no_problems(at: AppTest) -> None:
    """The page ran to the end without an exception or an error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)


def wait_for_job(at: AppTest, timeout: float = JOB_TIMEOUT) -> list[str]:
    """Rerun the page until it no longer shows a running job (its Cancel button); returns the progress
    texts seen on the way."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        at.run()
        seen.extend(p.proto.text for p in at.get("progress"))
        if not has_button(at, "Cancel") and not any("running for" in m for m in texts(at.markdown)):
            return seen
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(0.5)


def plotly_figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def run_traces(figure: dict) -> list[dict]:
    """The traces of a Compare chart that are runs (not the Pareto front's staircase)."""
    return [t for t in figure["data"] if t.get("name") != FRONT_NAME]


def values(array) -> list:
    """A Plotly JSON array as a list (Plotly writes numeric arrays as base64 ``bdata``)."""
    if isinstance(array, dict) and "bdata" in array:
        flat = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
        if "shape" in array:
            shape = array["shape"]
            flat = flat.reshape([int(n) for n in shape.split(",")] if isinstance(shape, str) else shape)
        return flat.tolist()
    return list(array)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def captions(at: AppTest) -> list[str]:
    return texts(at.caption)


def demo_photo(cls: str = "bean_rust", index: int = 0) -> Path:
    return sorted((DEMO_DATASET / cls).glob("*.jpg"))[index]


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dashboard") / "toptune_home"


@pytest.fixture(autouse=True)
def toptune_home(shared_home, monkeypatch) -> Path:
    """Overrides conftest's: the tests of this module share one data directory (and its one demo run)."""
    monkeypatch.setenv("TOPTUNE_HOME", str(shared_home))
    return shared_home


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """An empty data directory, for tests that must not see the shared run or cache."""
    home = tmp_path / "fresh_home"
    monkeypatch.setenv("TOPTUNE_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def beans30(tmp_path_factory) -> Path:
    """30 real photos per class (90), copied from the demo dataset."""
    return copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("beans30") / "beans", 30)


@pytest.fixture(scope="module")
def demo_run(shared_home):
    """The main flow, once: home -> "Try the demo dataset" -> Data -> Top-tune (lite0 + the default logistic
    regression, one view) -> done."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOPTUNE_HOME", str(shared_home))
        at = new_app()
        button(at, "Try the demo dataset").click().run()
        data_page = SimpleNamespace(titles=texts(at.title), subheaders=texts(at.subheader), metrics=metrics(at),
                                    figures=plotly_figures(at), images=len(at.image), exception=list(at.exception))
        goto(at, "toptune")
        assert at.selectbox(key="tt_backbone").value == "tf_efficientnet_lite0"
        assert at.radio(key="tt_classifier").value == "logreg" and at.radio(key="tt_views").value == "dihedral"
        toptune_page(at)
        button(at, "Top-tune").click().run()
        progress_seen = [p.proto.text for p in at.get("progress")] + wait_for_job(at)
        runs = RunStore(shared_home).list()
        yield SimpleNamespace(home=shared_home, at=at, data_page=data_page, progress_seen=progress_seen,
                              runs=runs, run=runs[0] if runs else None)


# --- the Job object (no streamlit) -------------------------------------------------------------------

def test_job_reports_progress_and_result():
    def target(progress, should_cancel):
        for i in range(3):
            progress(Progress("extract", i + 1, 3, "images"))
        progress(Progress("fit", 10, 10, "trees"))
        return "run-id"

    job = JobRegistry().submit("toptune", "test", target)
    assert job.wait(10)
    view = job.view()
    assert (view.state, view.result, view.error, view.active) == ("completed", "run-id", None, False)
    assert [p.stage for p in view.stages] == ["extract", "fit"]
    assert view.stages[0].done == 3 and view.latest.stage == "fit"


def test_job_cancel_and_failures_are_plain():
    started = threading.Event()

    def slow(progress, should_cancel):
        started.set()
        while True:
            if should_cancel():
                raise Cancelled("Extraction was cancelled.")
            time.sleep(0.01)

    registry = JobRegistry()
    job = registry.submit("toptune", "slow", slow)
    assert started.wait(10)
    assert registry.list(active=True) == [job]
    job.cancel()
    assert job.wait(10)
    assert (job.view().state, job.view().error) == ("cancelled", "Extraction was cancelled.")

    def user_error(progress, should_cancel):
        raise DatasetError("The dataset folder 'x' does not exist. Check the path.")

    def bug(progress, should_cancel):
        return {}["missing"]

    failed = registry.submit("toptune", "bad data", user_error)
    crashed = registry.submit("toptune", "bug", bug)
    assert failed.wait(10) and crashed.wait(10)
    assert failed.view().error == "The dataset folder 'x' does not exist. Check the path."
    assert failed.view().details is None
    view = crashed.view()
    assert view.state == "failed" and "KeyError" in view.error and "Traceback" not in view.error
    assert "Traceback" in view.details and "missing" in view.details
    assert registry.get(crashed.id) is crashed and registry.list("toptune", active=True) == []
    assert crashed.claim("selected") and not crashed.claim("selected")


def test_registry_forgets_oldest_finished_jobs():
    registry = JobRegistry(keep_finished=2)
    jobs = [registry.submit("x", str(i), lambda p, c: None) for i in range(4)]
    for job in jobs:
        job.wait(10)
    registry.submit("x", "last", lambda p, c: None).wait(10)
    kept = registry.list()
    assert len(kept) <= 3 and jobs[0] not in kept and kept[0].title == "last"


def test_dashboard_core_modules_do_not_import_streamlit():
    code = ("import sys, toptune_core.jobs.thread, toptune_core.data.uploads, toptune_core.workspace, "
            "toptune_core.reports, toptune_core.jobs.process; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=APP.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- every page renders with nothing recorded yet ----------------------------------------------------

@pytest.mark.parametrize("page", ["home", "data", "toptune", "finetune", "compare", "predictions", "classify"])
def test_every_page_renders_on_an_empty_data_folder(fresh_home, page):
    at = new_app()
    if page != "home":
        goto(at, page)
    no_problems(at)
    assert at.title, "every page has a title"
    if page in ("toptune", "finetune", "compare", "predictions", "classify"):
        assert at.info, "an empty page says what to do first"


# --- the main flow: demo dataset -> top-tune -> compare -> predictions -> classify --------------------

def test_home_explains_and_offers_the_demo(fresh_home):
    at = new_app()
    no_problems(at)
    intro = " ".join(texts(at.markdown))
    assert "Top-tuning" in intro and "frozen" in intro and "Random Forest" in intro
    assert has_button(at, "Try the demo dataset")


def test_demo_dataset_page_shows_classes_counts_and_photos(demo_run):
    page = demo_run.data_page
    assert not page.exception
    assert page.titles == ["1 · Data"], "the demo button leads to the Data page"
    assert page.subheaders[0].startswith("Demo: bean leaf diseases")
    assert page.metrics["Photos"] == "300" and page.metrics["Classes"] == "3"
    bars = page.figures[0]["data"][0]
    assert values(bars["x"]) == ["angular_leaf_spot", "bean_rust", "healthy"]
    assert values(bars["y"]) == [100, 100, 100]
    assert page.images == 12, "four thumbnails per class"


def test_demo_toptune_shows_progress_then_result(demo_run):
    at, run = demo_run.at, demo_run.run
    extraction = [t for t in demo_run.progress_seen if t.startswith("Reading the photos")]
    assert any(" of 300 photos · " in t and "photos/s · about" in t for t in extraction), demo_run.progress_seen
    no_problems(at)
    assert run is not None and run.status == "completed", [(r.status, r.error) for r in demo_run.runs]
    assert (run.method, run.backbone, run.classifier) == ("toptune", "tf_efficientnet_lite0", "logreg")
    shown = metrics(at)
    assert shown["Accuracy"] == f"{100 * run.accuracy:.1f} %"
    assert set(shown) >= {"Balanced accuracy", "Macro F1", "Features", "Classifier training", "Total"}
    assert any("Features extracted from 300 photos" in i for i in texts(at.info))
    assert run.accuracy > 0.6, "real features of real leaves beat guessing (1/3) by far"
    # the engine and its precision, recorded and named (the suite runs f32: tests/conftest.py)
    assert (run.timings["engine"], run.timings["precision"]) == ("onnxruntime", "f32")
    assert any("Engine: ONNX Runtime, f32" in c for c in captions(at)), captions(at)


def test_second_run_says_features_from_cache_after_a_reload(demo_run):
    at = new_app()  # a new session, as after a browser reload: the dataset choice is remembered
    toptune_page(at)
    no_problems(at)
    assert any("are in the cache" in c for c in captions(at))
    button(at, "Top-tune").click().run()
    wait_for_job(at)
    no_problems(at)
    assert any(i.startswith("Features from cache") for i in texts(at.info)), texts(at.info)
    newest = RunStore(demo_run.home).list()[0]
    assert newest.timings["cache_hit"] is True and newest.id != demo_run.run.id
    assert newest.metrics["accuracy"] == demo_run.run.metrics["accuracy"], "same features, split and seed"


def test_compare_plots_every_run_and_toggles_extraction_time(demo_run):
    at = goto(new_app(), "compare")
    no_problems(at)
    completed = [r for r in RunStore(demo_run.home).list(status="completed")]
    (figure,) = plotly_figures(at)
    xs = [x for trace in run_traces(figure) for x in values(trace["x"])]
    ys = [y for trace in run_traces(figure) for y in values(trace["y"])]
    assert len(ys) == len(completed) >= 1
    assert sorted(ys) == sorted(r.accuracy for r in completed)
    assert figure["layout"]["xaxis"]["type"] == "log"
    assert {t["legendgroup"].split(",")[0] for t in run_traces(figure)} == {"top-tuned"}
    table = at.dataframe[0].value
    assert len(table) == len(completed) and {"accuracy", "training time (s)", "backbone"} <= set(table.columns)
    # The best trade-offs (Pareto front) are ringed on the chart and ticked in the table: the most accurate run
    # always is one.
    (front,) = [t for t in figure["data"] if t.get("name") == FRONT_NAME]
    assert max(ys) in values(front["y"]) and table["best trade-off"].sum() == len(values(front["y"]))
    assert at.get("download_button"), "the table can be downloaded as CSV"

    at.toggle(key="cmp_include_extraction").set_value(False).run()
    xs_fit_only = [x for trace in run_traces(plotly_figures(at)[0]) for x in values(trace["x"])]
    assert sum(xs_fit_only) < sum(xs), "without feature extraction, top-tuning times are shorter"


def test_predictions_show_confusion_matrix_metrics_and_gallery(demo_run):
    run = demo_run.run
    at = goto(new_app(), "predictions")
    no_problems(at)
    heatmaps = [f for f in plotly_figures(at) if f["data"] and f["data"][0]["type"] == "heatmap"]
    assert heatmaps, "a confusion-matrix heatmap"
    assert values(heatmaps[0]["data"][0]["z"]) == run.metrics["confusion_matrix"]
    per_class = at.dataframe[0].value
    assert list(per_class["class"]) == ["angular_leaf_spot", "bean_rust", "healthy"]
    assert len(at.image) == min(24, run.metrics["n_test"])

    preds = run.predictions()
    at.toggle(key="pred_mistakes").set_value(True).run()
    wrong = preds[~preds["correct"]]
    assert any(c.startswith(f"{len(wrong)} photo(s), least confident first") for c in captions(at))
    shown = [img.captions[0] for img in at.image]
    assert len(shown) == min(24, len(wrong)) and all(c.startswith("Wrong · ") for c in shown)
    confidences = [float(c.rsplit("(", 1)[1].rstrip("%)")) for c in shown]
    assert confidences == sorted(confidences), "least confident first"

    at.selectbox(key="pred_true").set_value("healthy").run()
    at.selectbox(key="pred_pred").set_value("bean_rust").run()
    cell = run.metrics["confusion_matrix"][2][1]
    assert any(c.startswith(f"{cell} photo(s)") for c in captions(at))


def test_classify_a_real_photo_with_the_best_run(demo_run):
    at = goto(new_app(), "classify")
    no_problems(at)
    photo = demo_photo("bean_rust", 3)
    at.file_uploader(key="cls_upload").set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    no_problems(at)
    headline = [m for m in texts(at.markdown) if m.startswith("### ")]
    assert len(headline) == 1
    label = headline[0][4:]
    assert label in ("angular_leaf_spot", "bean_rust", "healthy")
    assert "Confidence" in metrics(at)
    bars = [f for f in plotly_figures(at) if f["data"][0].get("orientation") == "h"]
    assert bars and sorted(values(bars[0]["data"][0]["y"])) == ["angular_leaf_spot", "bean_rust", "healthy"]

    from toptune_core.predict import Predictor

    best = RunStore(demo_run.home).best()
    assert Predictor.from_run(best.id).predict(photo).label == label, "the page shows the model's own answer"
    assert at.selectbox(key="cls_teach_class").value == label, "teaching starts on the model's answer"


@pytest.mark.parametrize("name,data,expected", [
    ("leaf.jpg", b"this is not a photo", "not a readable image"),
    ("leaf.heic", b"\x00\x00\x00\x18ftypheic", "HEIC file, which is not supported"),
    ("leaf.png", b"", "empty"),
])
def test_classify_unreadable_upload_gets_a_clear_message(demo_run, name, data, expected):
    at = goto(new_app(), "classify")
    at.file_uploader(key="cls_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and expected in at.error[0].value and name in at.error[0].value
    assert not at.expander, "a user error shows no technical details"


def _jpeg_of(array) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array if array.ndim == 3 else np.stack([array] * 3, axis=-1)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_classify_a_photo_that_is_not_a_leaf_says_not_recognised(demo_run):
    import skimage.data

    at = goto(new_app(), "classify")
    at.file_uploader(key="cls_upload").set_value(("cup.jpg", _jpeg_of(skimage.data.coffee()), "image/jpeg")).run()
    no_problems(at)
    headline = [m[4:] for m in texts(at.markdown) if m.startswith("### ")]
    assert headline == ["Not recognised"]
    assert "Confidence" not in metrics(at), "no class, no confidence for a photo the model does not know"
    assert any("does not look like the photos this model was trained on" in w for w in texts(at.warning))
    assert not [f for f in plotly_figures(at) if f["data"][0].get("orientation") == "h"]
    assert at.selectbox(key="cls_teach_class").value is None, "no answer, no class chosen for teaching"


def test_classify_three_photos_of_one_plant_gives_one_combined_answer(demo_run):
    run = RunStore(demo_run.home).best()
    held_out = run.predictions()
    rust = held_out[(held_out["true"] == "bean_rust") & held_out["recognised"] & held_out["correct"]]["path"][:3]
    files = [(Path(p).name, Path(p).read_bytes(), "image/jpeg") for p in rust]
    at = goto(new_app(), "classify")
    at.selectbox(key="cls_run").set_value(run.id).run()
    at.file_uploader(key="cls_upload").set_value(files).run()
    no_problems(at)
    assert [m[4:] for m in texts(at.markdown) if m.startswith("### ")] == ["Combined diagnosis: bean_rust"]
    assert len([s for s in texts(at.success) if s.startswith("bean_rust · ")]) == 3  # each photo's own verdict
    assert at.selectbox(key="cls_teach_class").value == "bean_rust"
    assert "Confidence" in metrics(at)


def test_classify_strictness_shows_its_measured_effect(demo_run):
    at = goto(new_app(), "classify")
    options = at.radio(key="cls_strictness").options
    assert [o.split(" · ")[0] for o in options] == ["strict", "normal", "lenient"]
    assert all("of held-out photos" in o for o in options)
    assert at.radio(key="cls_strictness").value == "normal"


# --- other data sources --------------------------------------------------------------------------------

def test_local_folder_choice_and_a_wrong_path(fresh_home, beans30, tmp_path):
    at = goto(new_app(), "data")
    at.radio(key="data_source").set_value("Folder on this computer").run()
    at.text_input(key="folder_path").input(str(tmp_path / "no-such-folder")).run()
    button(at, "Use this folder").click().run()
    assert not at.exception and "does not exist" in at.error[0].value

    at.text_input(key="folder_path").input(str(beans30)).run()
    button(at, "Use this folder").click().run()
    no_problems(at)
    assert at.subheader[0].value == "Folder beans"
    assert metrics(at)["Photos"] == "90"


def zip_of(folder: Path, top: str = "beans") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


def test_uploaded_zip_becomes_the_dataset(fresh_home, beans30):
    at = goto(new_app(), "data")
    at.radio(key="data_source").set_value("Upload a zip").run()
    at.file_uploader(key="zip_upload").set_value(("photos.zip", b"PK not really", "application/zip")).run()
    button(at, "Unpack and use").click().run()
    assert not at.exception
    assert "is not a zip file" in " ".join(texts(at.error)), texts(at.error)

    at.file_uploader(key="zip_upload").set_value(("beans.zip", zip_of(beans30), "application/zip")).run()
    button(at, "Unpack and use").click().run()
    wait_for_job(at)
    no_problems(at)
    assert at.subheader[0].value == "Uploaded zip beans.zip"
    root = Path(at.session_state["dataset"]["path"])
    assert root.is_relative_to(fresh_home / "uploads") and sorted(p.name for p in root.iterdir()) == [
        "angular_leaf_spot", "bean_rust", "healthy"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eden_download_offline_says_so_plainly(fresh_home, monkeypatch):
    # A real download attempt against a local address where nothing listens: what an offline laptop sees.
    monkeypatch.setenv("TOPTUNE_EDEN_URL", f"http://127.0.0.1:{closed_port()}/datasets/")
    at = goto(new_app(), "data")
    at.radio(key="data_source").set_value("Eden Library").run()
    from toptune_core.data.eden import EDEN_CATALOGUE

    at.multiselect(key="eden_names").set_value([EDEN_CATALOGUE[1].name]).run()
    assert any("at least two" in i for i in texts(at.info)), "one plant is one class: not enough"
    at.multiselect(key="eden_names").set_value([EDEN_CATALOGUE[1].name, EDEN_CATALOGUE[2].name]).run()
    button(at, "Download and use").click().run()
    wait_for_job(at, timeout=60)
    assert not at.exception
    (error,) = texts(at.error)
    assert error.startswith("Could not download Eden dataset") and "offline" in error
    assert not at.expander


# --- jobs in the background: two tabs at once, cancel, reload -----------------------------------------

def test_two_tabs_top_tune_at_once_without_clashing(fresh_home, beans30):
    tabs = [new_app(), new_app()]
    for at in tabs:
        goto(at, "data")
        at.radio(key="data_source").set_value("Folder on this computer").run()
        at.text_input(key="folder_path").input(str(beans30)).run()
        button(at, "Use this folder").click().run()
        toptune_page(at)
    for at in tabs:
        button(at, "Top-tune").click().run()
    job_ids = [at.session_state["job:toptune"] for at in tabs]
    assert job_ids[0] != job_ids[1]
    for at in tabs:
        wait_for_job(at)
        no_problems(at)
    runs = RunStore(fresh_home).list()
    assert len(runs) == 2 and all(r.status == "completed" for r in runs)
    assert sorted(r.timings["cache_hit"] for r in runs) == [False, True], "one extraction, shared through the cache"
    assert runs[0].metrics["confusion_matrix"] == runs[1].metrics["confusion_matrix"]
    entries = [p for p in (fresh_home / "features").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2  # the run's features, and the near-duplicate check's (lite0 at 224 px, one view)
    for at, run_id in zip(tabs, [r.id for r in sorted(runs, key=lambda r: r.created)]):
        assert any(c.startswith(f"Run {run_id}") for c in captions(at)), "each tab shows its own run"


def test_cancel_from_a_reloaded_tab(fresh_home):
    first = new_app()
    button(first, "Try the demo dataset").click().run()
    goto(first, "toptune")
    button(first, "Top-tune").click().run()

    reloaded = goto(new_app(), "toptune")  # the same browser after a reload: a new session finds the job
    assert has_button(reloaded, "Cancel"), "the running job is found again after a reload"
    assert reloaded.get("progress")
    button(reloaded, "Cancel").click().run()
    wait_for_job(first, timeout=120)
    assert not first.exception
    assert any("cancelled" in w.value for w in first.warning), texts(first.warning)
    (run,) = RunStore(fresh_home).list()
    assert run.status == "cancelled"
    features = fresh_home / "features"
    assert not features.exists() or not [p for p in features.iterdir() if not p.name.startswith(".")], \
        "a cancelled extraction leaves no cache entry"


# --- fine-tuning, launched and followed from the page -------------------------------------------------

@pytest.fixture(scope="module")
def beans16(tmp_path_factory) -> Path:
    """16 real photos per class (48): enough for a one-epoch fine-tune in well under a minute."""
    return copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("beans16") / "beans", 16)


def use_folder(at: AppTest, folder: Path) -> AppTest:
    goto(at, "data")
    at.radio(key="data_source").set_value("Folder on this computer").run()
    at.text_input(key="folder_path").input(str(folder)).run()
    button(at, "Use this folder").click().run()
    return at


def start_finetune(at: AppTest, epochs: int = 1) -> str:
    goto(at, "finetune")
    no_problems(at)
    at.number_input(key="ft_epochs").set_value(epochs).run()
    at.radio(key="ft_test_views").set_value(ONE_VIEW).run()
    button(at, "Start fine-tuning").click().run()
    assert not at.exception
    assert texts(at.subheader)[:1] == ["Running"], texts(at.subheader)
    (run,) = RunStore().list(status="running", method="finetune")
    return run.id


def test_finetune_runs_in_the_background_survives_a_reload_and_is_compared(fresh_home, beans16):
    tab = use_folder(new_app(), beans16)
    run_id = start_finetune(tab, epochs=1)
    assert any(m.startswith(f"**Fine-tune {run_id}** · running") for m in texts(tab.markdown))

    reloaded = goto(new_app(), "finetune")  # a reload: a new session finds the job through the run store
    assert has_button(reloaded, "Cancel fine-tune")
    deadline = time.monotonic() + JOB_TIMEOUT
    saw_progress = False
    while has_button(reloaded, "Cancel fine-tune"):
        saw_progress = saw_progress or bool(reloaded.get("progress"))
        assert time.monotonic() < deadline, "the fine-tune did not finish in time"
        time.sleep(1)
        reloaded.run()
    assert saw_progress, "per-epoch progress was shown while it ran"
    no_problems(reloaded)
    run = RunStore().get(run_id)
    assert run.status == "completed", (run.status, run.error)
    assert "Accuracy" in metrics(reloaded) and "Training time" in metrics(reloaded)
    curve = [f for f in plotly_figures(reloaded) if any(t.get("name") == "validation accuracy" for t in f["data"])]
    assert curve, "the training curve"

    toptune_page(tab)
    button(tab, "Top-tune").click().run()
    wait_for_job(tab)
    (figure,) = plotly_figures(goto(tab, "compare"))
    methods = {t["legendgroup"].split(",")[0] for t in run_traces(figure)}
    assert methods == {"top-tuned", "fine-tuned"}
    fine = [t for t in run_traces(figure) if t["legendgroup"].startswith("fine-tuned")][0]
    assert values(fine["y"]) == [run.accuracy]

    goto(tab, "classify")
    tab.selectbox(key="cls_run").set_value(run_id).run()
    photo = demo_photo("angular_leaf_spot", 40)
    tab.file_uploader(key="cls_upload").set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    no_problems(tab)
    assert [m[4:] for m in texts(tab.markdown) if m.startswith("### ")][0] in run.params["classes"]


def test_finetune_cancel_from_the_page(fresh_home, beans16):
    tab = use_folder(new_app(), beans16)
    run_id = start_finetune(tab, epochs=3)
    button(tab, "Cancel fine-tune").click().run()
    assert not tab.exception
    assert RunStore().get(run_id).status == "cancelled"
    assert any("cancelled" in w.lower() for w in texts(tab.warning)), texts(tab.warning)
    assert not has_button(tab, "Cancel fine-tune") and has_button(tab, "Start fine-tuning")


def test_classify_page_offers_the_model_as_one_zip(demo_run):
    """The button is there and makes its zip only when clicked (a deferred download); the zip itself is
    tested in test_portable.py (AppTest cannot click a download)."""
    at = goto(new_app(), "classify")
    no_problems(at)
    buttons = [b for b in at.get("download_button") if "Download this model" in b.proto.label]
    assert len(buttons) == 1 and buttons[0].proto.deferred_file_id


# --- the Eden catalogue on the Data page; the Ray engine on the Top-tune page -------------------------

def test_eden_catalogue_search_preset_and_typed_names(fresh_home):
    from toptune_core.data.eden_catalogue import EDEN_CATALOGUE, EDEN_PRESETS

    at = goto(new_app(), "data")
    at.radio(key="data_source").set_value("Eden Library").run()
    no_problems(at)
    table = at.dataframe[0].value
    assert len(table) == len(EDEN_CATALOGUE) >= 26 and {"crop", "condition", "class"} <= set(table.columns)
    at.text_input(key="eden_search").input("weed").run()
    weeds = at.dataframe[0].value
    assert 0 < len(weeds) < len(EDEN_CATALOGUE) and set(weeds["condition"]) == {"Weed"}
    assert any("match 'weed'" in c for c in captions(at))

    preset = EDEN_PRESETS["top-tuning"]
    button(at, f"{preset.title} (4 datasets)").click().run()
    no_problems(at)
    chosen = at.multiselect(key="eden_names")
    assert chosen.value == list(preset.names), "the preset selects its four datasets, whatever the search shows"
    assert sorted(chosen.format_func(n).split(" → ")[1] for n in chosen.value) == [
        "class 'Cucumber'", "class 'Processing_tomato'", "class 'Tomato'", "class 'Watermelon'"]
    assert not button(at, "Download and use").disabled

    typed = "Kale-Brassica_oleracea-Healthy-PRX-RGB-NA-20210607"  # not in the catalogue: typed by hand
    chosen.set_value(list(preset.names) + [typed]).run()
    no_problems(at)
    assert at.multiselect(key="eden_names").value[-1] == typed
    assert "5 class(es): Cucumber, Kale, Processing_tomato, Tomato, Watermelon." in " ".join(captions(at))


def test_toptune_page_offers_the_ray_engine_only_when_a_cluster_is_configured(fresh_home, beans16, monkeypatch):
    at = use_folder(new_app(), beans16)
    goto(at, "toptune")
    no_problems(at)
    assert not [r for r in at.radio if r.key == "tt_where"]
    monkeypatch.setenv("TOPTUNE_RAY_ADDRESS", "ray://head.example:10001")
    at = goto(use_folder(new_app(), beans16), "toptune")
    no_problems(at)
    where = at.radio(key="tt_where")
    assert where.value == "local" and where.options == ["This machine", "Ray cluster"]
    assert "ray://head.example:10001" in where.help


# --- kernel, automatic choice, sweep, near-duplicates ----------------------------------------------------

def test_sweep_and_automatic_choice_from_the_top_tune_page(fresh_home, beans30, monkeypatch):
    monkeypatch.setenv("TOPTUNE_VIEWS", ONE_VIEW)  # what a sweep extracts with (it has no views widget)
    tab = use_folder(new_app(), beans30)
    toptune_page(tab)
    tab.multiselect(key="sw_backbones").set_value(["tf_efficientnet_lite0"]).run()
    tab.multiselect(key="sw_classifiers").set_value(["kernel", "logreg"]).run()
    button(tab, "Sweep").click().run()
    progress = wait_for_job(tab)
    no_problems(tab)
    assert any(p.startswith("Sweep: ") and " of 2 runs" in p for p in progress), progress
    runs = RunStore(fresh_home).list(status="completed")
    assert sorted(r.classifier for r in runs) == ["kernel", "logreg"]
    (table,) = [d.value for d in tab.dataframe if "best trade-off" in d.value.columns]
    assert sorted(table["run"]) == sorted(r.id for r in runs) and table["best trade-off"].any()

    tab.radio(key="tt_classifier").set_value("auto").run()
    button(tab, "Top-tune").click().run()
    wait_for_job(tab)
    no_problems(tab)
    run = RunStore(fresh_home).list()[0]
    assert run.classifier == "auto" and run.status == "completed"
    (cv,) = [d.value for d in tab.dataframe if "estimated accuracy" in d.value.columns]
    assert list(cv["classifier"].str.split().str[0]) == ["Logistic", "Random", "Kernel"] and cv["chosen"].sum() == 1
    assert any(m.startswith("**Automatic choice: ") for m in texts(tab.markdown))
    (figure,) = plotly_figures(goto(tab, "compare"))
    assert len([y for t in run_traces(figure) for y in values(t["y"])]) == 3
    assert [t for t in figure["data"] if t.get("name") == FRONT_NAME], "the best trade-offs are marked"


def test_data_page_finds_planted_near_duplicates_and_the_grouped_split_separates_none(fresh_home, tmp_path):
    from PIL import Image

    from toptune_core.data.dataset import load_dataset
    from toptune_core.leakage import data_leakage

    data = copy_subset(DEMO_DATASET, tmp_path / "twins", 10)
    for photo in sorted(data.rglob("*.jpg"))[::5]:  # a re-shot (1 % crop, re-encoded) of every fifth photo
        with Image.open(photo) as im:
            w, h = im.size
            im.crop((2, 2, w - 2, h - 2)).resize((w, h)).save(photo.with_name(f"twin_{photo.name}"), quality=85)
    tab = use_folder(new_app(), data)
    assert has_button(tab, "Check for near-duplicates")
    button(tab, "Check for near-duplicates").click().run()
    wait_for_job(tab)
    no_problems(tab)
    seed = next(s for s in range(20) if data_leakage(load_dataset(data), seed=s, test_size=0.25)["pairs_across"])
    [w for w in tab.number_input if w.label == "Split seed"][0].set_value(seed).run()
    expected = data_leakage(load_dataset(data), seed=seed, test_size=0.25)
    shown = metrics(tab)
    assert shown["Near-duplicate pairs"] == str(expected["pairs"]) and expected["pairs"] >= 6
    assert shown["Pairs across the split"] == str(expected["pairs_across"]) != "0"
    pair_captions = [c for c in captions(tab) if c.startswith("cosine similarity ")]
    assert pair_captions and len(tab.image) == 12 + 2 * len(pair_captions), "pairs side by side, after the thumbnails"
    tab.radio(key="data_split_kind").set_value("grouped").run()
    no_problems(tab)
    assert metrics(tab)["Pairs across the split"] == "0"
    toptune_page(tab)
    button(tab, "Top-tune").click().run()
    wait_for_job(tab)
    run = RunStore(fresh_home).list()[0]
    assert run.split["kind"] == "grouped" and run.split["near_duplicates"]["pairs_across"] == 0
