"""Shared mode (issue 11), below the browser: settings, the Makefile, the path allow-list, visitors' workspaces,
showcase runs, limits, expiry, owner-checked jobs, and the pages through AppTest (password, login, no path,
limits). Real photos, real weights, real run stores; the browser tests are in test_browser_shared.py.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, copy_subset
from toptune_core.config import DEMO_DATASET, LOCAL_LIMITS, SHARED_LIMITS, Limits, Settings
from toptune_core.data.dataset import load_dataset
from toptune_core.errors import LimitReached, PathNotAllowed, RunNotFound, ToptuneError
from toptune_core.jobs.thread import JobRegistry
from toptune_core.runs.store import RunStore
from toptune_core.shared.paths import check_photos_inside, offered_folders, resolve_inside
from toptune_core.shared.visitors import SEEN_FILE, Visitors

APP = REPO / "app.py"


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def operator_run(tmp_path_factory, lite0_extractor):
    """A completed top-tuning run (lite0 + Random Forest, 8 real photos per class) in an operator's store."""
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache

    home = tmp_path_factory.mktemp("operator") / "home"
    data = copy_subset(DEMO_DATASET, tmp_path_factory.mktemp("op_data") / "beans", 8)
    store = RunStore(home)
    run = run_toptuning(data, store=store, cache=FeatureCache(home / "features"), extractor=lite0_extractor)
    assert run.status == "completed"
    return store, run


@pytest.fixture
def shared(monkeypatch, toptune_home) -> Settings:
    """Shared mode on this test's empty data folder."""
    monkeypatch.setenv("TOPTUNE_SHARED", "1")
    return Settings.from_env()


@pytest.fixture
def roots(tmp_path) -> Path:
    """An allowed data root holding a real dataset, a link out of the root, and a folder outside it."""
    root = tmp_path / "roots"
    copy_subset(DEMO_DATASET, root / "beans", 4)
    outside = copy_subset(DEMO_DATASET, tmp_path / "outside" / "secret", 4)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


def new_app(**query) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update(query)
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def button(at: AppTest, label: str):
    (match,) = [b for b in at.button if b.label == label]
    return match


def no_problems(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


# --- settings and the Makefile ---------------------------------------------------------------------------

def test_settings_read_shared_mode_roots_and_limits(tmp_path):
    local = Settings.from_env({"TOPTUNE_HOME": str(tmp_path)})
    assert not local.shared and local.limits == LOCAL_LIMITS and local.limits.runs is None
    env = {"TOPTUNE_HOME": str(tmp_path), "TOPTUNE_SHARED": "1",
           "TOPTUNE_DATA_ROOTS": os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]),
           "TOPTUNE_MAX_RUNS": "5", "TOPTUNE_IDLE_HOURS": "0.5"}
    s = Settings.from_env(env)
    assert s.shared and s.data_roots == (tmp_path / "a", tmp_path / "b")
    assert s.limits == Limits(photo_mb=SHARED_LIMITS.photo_mb, zip_mb=SHARED_LIMITS.zip_mb, runs=5,
                              disk_mb=SHARED_LIMITS.disk_mb, jobs=1, idle_hours=0.5)
    assert (s.visitors_dir, s.showcase_dir) == (tmp_path / "visitors", tmp_path / "showcase")
    with pytest.raises(ToptuneError, match=r"^TOPTUNE_MAX_DISK_MB must be a number above 0 \(got 'lots'\)\.$"):
        Settings.from_env({**env, "TOPTUNE_MAX_DISK_MB": "lots"})


def _streamlit_line(target: str, *args: str) -> str:
    out = subprocess.run(["make", "-n", target, *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.replace("\\\n", " ").splitlines() if "streamlit run app.py" in ln]
    return line


def test_make_run_is_local_and_make_serve_is_shared_mode():
    run = _streamlit_line("run")
    assert "--server.address 127.0.0.1" in run and "0.0.0.0" not in run and "TOPTUNE_SHARED" not in run
    assert "--server.address 0.0.0.0" in _streamlit_line("run", "HOST=0.0.0.0"), "opened to the network on purpose"
    serve = _streamlit_line("serve")
    assert serve.startswith("TOPTUNE_SHARED=1 ") and "--server.address 0.0.0.0" in serve
    assert re.search(r"--server.maxUploadSize \d+", serve)


# --- the allow-list -----------------------------------------------------------------------------------------

def test_only_folders_inside_the_roots_are_offered_and_accepted(roots, tmp_path):
    beans = roots / "beans"
    assert resolve_inside(beans, [roots]) == beans.resolve()
    assert resolve_inside(str(roots / "beans" / "healthy" / ".." / ".."), [roots]) == roots.resolve()
    assert [label for label, _ in offered_folders([roots])] == ["roots", "roots/beans"], "the link out is not offered"
    for escape in (roots / "escape", roots / "beans" / ".." / ".." / "outside" / "secret", tmp_path / "outside",
                   "/", "/etc", roots / "no-such-folder", "beans\x00"):
        with pytest.raises(PathNotAllowed, match="not one of the folders this server offers") as info:
            resolve_inside(escape, [roots])
        assert "outside/secret" not in str(info.value).replace(str(escape), ""), "the link's target is not shown"
    # A photo inside an allowed folder that links to a file outside: the whole folder is refused.
    ds = load_dataset(beans)
    check_photos_inside(ds, [roots])
    leaked = beans / "healthy" / "zz_link.jpg"
    leaked.symlink_to(next((tmp_path / "outside" / "secret" / "healthy").glob("*.jpg")))
    with pytest.raises(PathNotAllowed, match=r"^1 photo\(s\) in 'beans' link to files outside"):
        check_photos_inside(load_dataset(beans), [roots])


# --- visitors ------------------------------------------------------------------------------------------------

def test_visitors_get_private_workspaces_and_cannot_name_each_others_runs(shared, operator_run):
    op_store, run = operator_run
    visitors = Visitors(shared)
    token_a, a = visitors.create()
    token_b, b = visitors.create()
    assert token_a != token_b and len(token_a) == 32 and a.home != b.home
    assert token_a not in str(a.home), "the folder is named by a hash, never by the token"
    assert visitors.from_token(token_a) == a
    for bad in (None, "", "x" * 32, token_a[:-1], "../" + token_a[3:], token_a + "/.."):
        assert visitors.from_token(bad) is None, bad
    RunStore(a.home).import_run(op_store, run.id)
    assert [r.id for r in a.completed_runs()] == [run.id] and b.completed_runs() == []
    assert a.find_run(run.id)[1].id == run.id
    with pytest.raises(RunNotFound, match=rf"^Run '{run.id}' was not found in your workspace\.$"):
        b.find_run(run.id)
    a.workspace().update(dataset={"kind": "demo", "path": str(DEMO_DATASET), "label": "demo"})
    assert b.workspace().load()["dataset"] is None
    alice = visitors.from_identity("https://idp.example", "alice")
    assert visitors.from_identity("https://idp.example", "alice") == alice
    assert visitors.from_identity("https://other.example", "alice").home != alice.home


def test_showcase_runs_are_seen_by_every_visitor_read_only(shared, operator_run, subprocess_env):
    from toptune_core.predict import Predictor

    op_store, run = operator_run
    op_home = shared.home.parent / "op_home"
    RunStore(op_home).import_run(op_store, run.id)  # the operator's own store, where the CLI looks
    env = {**subprocess_env, "TOPTUNE_HOME": str(op_home)}
    cli = subprocess.run([sys.executable, "-m", "toptune_core", "showcase", run.id], env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and "every visitor sees it" in cli.stdout, cli.stderr
    visitor = Visitors(Settings.from_env({**env, "TOPTUNE_SHARED": "1"})).create()[1]
    (seen,) = visitor.completed_runs()
    assert seen.id == run.id and visitor.is_showcase(seen)
    showcase, found = visitor.find_run(run.id)
    assert showcase.root == op_home / "showcase" and visitor.store().list() == [], "not in the visitor's store"
    photo = sorted((DEMO_DATASET / "bean_rust").glob("*.jpg"))[50]
    expected = Predictor.from_run(run.id, store=op_store).predict(photo).label
    assert Predictor.from_run(run.id, store=showcase).predict(photo).label == expected, "checksums copied intact"
    again = subprocess.run([sys.executable, "-m", "toptune_core", "showcase", run.id], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.strip() == f"error: Run {run.id} is already there."
    removed = subprocess.run([sys.executable, "-m", "toptune_core", "showcase", "--remove", run.id], env=env,
                             capture_output=True, text=True, timeout=120)
    assert removed.returncode == 0 and visitor.completed_runs() == []


def test_limits_give_one_clear_line(shared, operator_run):
    op_store, run = operator_run
    visitors = Visitors(Settings(shared.home, shared=True, limits=Limits(runs=1, disk_mb=1000, jobs=1)))
    v = visitors.create()[1]
    v.check_new_run()
    RunStore(v.home).import_run(op_store, run.id)
    with pytest.raises(LimitReached, match=r"^Your workspace holds 1 run\(s\), the most this server keeps for one "
                                           r"visitor \(1\)\. Delete runs .* on the Compare page"):
        v.check_new_run()
    v.check_job_slot([])
    with pytest.raises(LimitReached, match=r"^You already have a job running \(Top-tuning x\); this server runs 1 "):
        v.check_job_slot(["Top-tuning x"])
    empty = visitors.create()[1]
    limit = round(empty.disk_mb() + 0.01, 2)  # room for an empty store, not for a run's files
    tiny = dataclasses.replace(empty, limits=Limits(disk_mb=limit))
    tiny.check_room()
    RunStore(tiny.home).import_run(op_store, run.id)
    with pytest.raises(LimitReached, match=rf"^Your workspace uses \d+\.\d MB of the {limit:g} MB this server allows "
                                           r"one visitor\. Delete runs"):
        tiny.check_room()
    with pytest.raises(LimitReached, match=r"and this needs 2 MB more"):
        dataclasses.replace(empty, limits=Limits(disk_mb=1)).check_room(2 * 2 ** 20)


def test_idle_workspaces_are_removed_with_their_files_but_not_busy_ones(shared):
    visitors = Visitors(shared)
    (t_idle, idle), (t_busy, busy), (t_new, fresh) = visitors.create(), visitors.create(), visitors.create()
    (idle.home / "uploads").mkdir()
    (idle.home / "uploads" / "photos.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    _, training = visitors.create()
    RunStore(training.home).start(method="finetune", backbone="tf_efficientnet_lite0", dataset="d", pid=os.getpid())
    long_ago = time.time() - 25 * 3600
    for v in (idle, busy, training):
        os.utime(v.home / SEEN_FILE, (long_ago, long_ago))
    removed = visitors.sweep(busy=[busy.key])
    assert removed == [idle.key] and not idle.home.exists()
    assert visitors.from_token(t_idle) is None, "an expired link gives a new workspace"
    assert visitors.from_token(t_busy) == busy and visitors.from_token(t_new) == fresh and training.home.is_dir()
    assert not [p for p in visitors.root.iterdir() if p.name.startswith(".")], "nothing half-removed is left"


def test_jobs_are_found_only_by_their_owner():
    registry = JobRegistry()
    mine = registry.submit("toptune", "mine", lambda p, c: None, owner="a")
    theirs = registry.submit("toptune", "theirs", lambda p, c: None, owner="b")
    assert registry.get(mine.id, owner="a") is mine and registry.get(mine.id, owner="b") is None
    assert registry.list(owner="b") == [theirs] and set(registry.list()) == {mine, theirs}


# --- the pages in shared mode (AppTest) ---------------------------------------------------------------------

def test_a_visitor_keeps_their_workspace_by_the_link_and_others_start_empty(shared):
    a = new_app().run()
    token = a.query_params["v"]
    assert any("Sharing the link shares the workspace" in c for c in texts(a.caption))
    button(a, "Try the demo dataset").click().run()
    no_problems(a)
    assert a.query_params["v"] == token, "the token stays in the URL after a page change"
    again = new_app(v=token).run()  # a reload, or the bookmark
    assert again.query_params["v"] == token and "Dataset: Demo" in " ".join(texts(again.caption))
    other = new_app().run()
    assert other.query_params["v"] != token and "Dataset: none chosen yet" in texts(other.caption)
    stale = new_app(v="A" * 32).run()
    assert stale.query_params["v"] != "A" * 32
    assert any("expired or does not exist" in w for w in texts(stale.warning))


def test_shared_data_page_offers_allowed_folders_and_no_path(shared, roots, monkeypatch):
    at = new_app().run().switch_page("pages/data.py").run()
    assert at.radio(key="data_source").options == ["Demo dataset", "Eden Library", "Upload a zip"]
    monkeypatch.setenv("TOPTUNE_DATA_ROOTS", str(roots))
    at = new_app().run().switch_page("pages/data.py").run()
    assert "Folder on this computer" not in at.radio(key="data_source").options
    at.radio(key="data_source").set_value("Folder on this server").run()
    assert not at.text_input, "no way to type a server path"
    folders = at.selectbox(key="server_folder")
    assert folders.options == ["roots", "roots/beans"], "the link out of the root is not offered"
    folders.set_value(str((roots / "beans").resolve())).run()
    button(at, "Use this folder").click().run()
    no_problems(at)
    assert at.subheader[0].value == "Server folder roots/beans"  # (the count is the version's: the metric)
    assert at.metric[0].label == "Photos" and at.metric[0].value == "12"
    assert texts(at.caption).count(f"Folder: {(roots / 'beans').resolve()}") == 0, "no server path is shown"


def test_uploads_over_the_limits_get_one_line_and_nothing_else_breaks(shared, operator_run, monkeypatch):
    op_store, run = operator_run
    RunStore(shared.showcase_dir).import_run(op_store, run.id)
    monkeypatch.setenv("TOPTUNE_MAX_ZIP_MB", "0.05")
    monkeypatch.setenv("TOPTUNE_MAX_PHOTO_MB", "0.01")
    at = new_app().run().switch_page("pages/data.py").run()
    at.radio(key="data_source").set_value("Upload a zip").run()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(DEMO_DATASET.rglob("*.jpg"))[:12]:
            zf.write(p, f"beans/{p.parent.name}/{p.name}")
    at.file_uploader(key="zip_upload").set_value(("beans.zip", buf.getvalue(), "application/zip")).run()
    button(at, "Unpack and use").click().run()
    assert not at.exception
    (error,) = texts(at.error)
    assert re.fullmatch(r"'beans\.zip' is 0\.\d\d MB; the limit is 0\.05 MB; nothing was saved\. Split .*", error)
    assert any("No dataset chosen yet" in i for i in texts(at.info)), "the rest of the page goes on"

    at.switch_page("pages/classify.py").run()  # the showcase run is the visitor's model
    no_problems(at)
    photo = sorted((DEMO_DATASET / "healthy").glob("*.jpg"))[60]
    at.file_uploader(key="cls_upload").set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    assert not at.exception
    (error,) = texts(at.error)
    assert re.match(rf"'{photo.name}' is 0\.0\d MB; the limit is 0\.01 MB for one photo\.", error), error
    assert "showcase" in at.selectbox(key="cls_run").format_func(run.id)


def test_a_visitor_at_the_run_limit_gets_one_line_on_top_tune(shared, operator_run, monkeypatch):
    op_store, run = operator_run
    monkeypatch.setenv("TOPTUNE_MAX_RUNS", "1")
    at = new_app().run()
    visitor = at.session_state["_visitor"]
    RunStore(visitor.home).import_run(op_store, run.id)
    button(at, "Try the demo dataset").click().run()
    at.switch_page("pages/toptune.py").run()
    button(at, "Top-tune").click().run()
    assert not at.exception
    (error,) = texts(at.error)
    assert error.startswith("Your workspace holds 1 run(s), the most this server keeps for one visitor (1).")
    assert not at.get("progress") and at.selectbox(key="tt_backbone"), "no job started; the page is whole"
    at.switch_page("pages/compare.py").run()
    no_problems(at)
    at.multiselect(key="cmp_delete").set_value([run.id]).run()
    button(at, "Delete these runs").click().run()
    assert RunStore(visitor.home).list() == [], "deleting a run makes room"


def test_password_gate(shared):
    at = new_app()
    at.secrets["toptune_password"] = "beans-2026"
    at.run()
    assert texts(at.title) == ["Toptune"] and not at.query_params.get("v"), "no workspace before the password"
    assert not [b for b in at.button if b.label == "Try the demo dataset"]
    at.text_input(key="access_password").input("guess")
    at.button[0].click().run()
    assert texts(at.error) == ["Wrong password."] and not at.query_params.get("v")
    at.text_input(key="access_password").input("beans-2026")
    at.button[0].click().run()
    no_problems(at)
    assert at.query_params.get("v") and button(at, "Try the demo dataset")


def test_logged_in_visitors_keep_their_workspace_across_sessions(shared):
    """st.login itself needs an identity provider (not reachable offline); this is what the app does with the
    identity ``st.user`` gives it."""
    def session(sub: str) -> AppTest:
        at = new_app()
        at.user = {"is_logged_in": True, "iss": "https://idp.example", "sub": sub, "email": f"{sub}@example.org"}
        return at.run()

    first = session("alice")
    assert not first.query_params.get("v"), "no token in the URL for a logged-in visitor"
    assert any("as alice@example.org" in c for c in texts(first.caption)) and button(first, "Log out")
    button(first, "Try the demo dataset").click().run()
    assert "Dataset: Demo" in " ".join(texts(session("alice").caption))
    assert "Dataset: none chosen yet" in texts(session("bob").caption)


def test_a_workspace_removed_while_its_tab_is_open_starts_again_empty(shared, monkeypatch):
    at = new_app().run()
    button(at, "Try the demo dataset").click().run()
    old_token, old_home = at.query_params["v"], at.session_state["_visitor"].home
    os.utime(old_home / SEEN_FILE, (0, 0))
    assert Visitors(shared).sweep() == [old_home.name] and not old_home.exists()
    at.run()
    no_problems(at)
    assert at.query_params["v"] != old_token and any("expired" in w for w in texts(at.warning))
    assert "Dataset: none chosen yet" in texts(at.caption) and not old_home.exists()


def test_the_fine_tune_page_shows_the_place_in_the_server_queue(shared):
    from toptune_core.jobs.process import FinetuneJob

    tabs = [new_app().run(), new_app().run()]
    for at in tabs:
        button(at, "Try the demo dataset").click().run()
        at.switch_page("pages/finetune.py").run()
        button(at, "Start fine-tuning").click().run()
        no_problems(at)
    first, second = tabs
    (running,) = first.session_state["_visitor"].store().list(status="running")
    try:
        assert texts(first.subheader)[:1] == ["Running"]
        assert texts(second.subheader)[:1] == ["Waiting"], "one fine-tune at a time on the server"
        assert any("number 1 in the queue" in i for i in texts(second.info))
        assert second.session_state["_visitor"].store().list() == [], "nothing of the second visitor runs yet"
        button(second, "Leave the queue").click().run()
        no_problems(second)
        assert button(second, "Start fine-tuning") and not second.session_state["_visitor"].store().list()
    finally:
        FinetuneJob.attach(running.id, first.session_state["_visitor"].home).cancel()


def test_shared_mode_modules_do_not_import_streamlit():
    code = ("import sys, toptune_core.shared.visitors, toptune_core.shared.paths, toptune_core.jobs.queue, "
            "toptune_core.cli.showcase; print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
