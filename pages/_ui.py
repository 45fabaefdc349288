"""Pieces every dashboard page shares: plain-word errors, remembered choices, cached models, job progress.

All work is done by ``toptune_core``; this module only lays out widgets, keeps
per-tab choices in ``st.session_state`` (restored from the on-disk
``Workspace`` after a browser reload), and draws background jobs from a
fragment that reruns on a timer while they run.
"""

from __future__ import annotations

import runpy
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import streamlit as st

from toptune_core.workspace import Workspace
from toptune_core.data.dataset import Dataset, load_dataset
from toptune_core.errors import ToptuneError
from toptune_core.jobs.thread import Job, JobTarget, JobView, registry
from toptune_core.progress import Progress
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.config import toptune_home

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES = {
    "home": "pages/home.py",
    "data": "pages/data.py",
    "toptune": "pages/toptune.py",
    "finetune": "pages/finetune.py",
    "compare": "pages/compare.py",
    "predictions": "pages/predictions.py",
    "classify": "pages/classify.py",
}


def through_router() -> None:
    """Make sure this page runs inside app.py (its sidebar, its ``st.navigation``).

    Streamlit runs a ``pages/`` file on its own (its older multipage mode, which
    a ``pages/`` folder switches on) until some session has called
    ``st.navigation``: on a fresh server whose first request is a page's URL (a
    bookmark, a reload after a restart), and in AppTest. Then this switches
    the server to the router, as ``st.navigation`` itself does, and runs app.py
    (and through it this same page) in this same script run, so a click that
    started the run is not lost.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(APP), run_name="__main__")  # the app, this page included, via st.navigation
        st.stop()


# --- errors in plain words -----------------------------------------------------------------------

UNEXPECTED = ("Something unexpected went wrong. Nothing already saved was lost; try again, and if it happens "
              "again, show the details below to whoever maintains this tool.")


def show_details(details: str) -> None:
    with st.expander("Details (for whoever maintains this tool)"):
        st.code(details, language=None)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Show a ``ToptuneError`` as its one-line message, anything else as a plain sentence with details folded away.

    Streamlit's own rerun/stop signals are BaseExceptions and pass through.
    """
    try:
        yield
    except ToptuneError as e:
        st.error(str(e))
    except Exception:
        st.error(UNEXPECTED)
        show_details(traceback.format_exc())


# --- remembered choices (per tab, restored from the workspace after a reload) ---------------------

def workspace() -> Workspace:
    return Workspace()


def _remembered(key: str):
    if key not in st.session_state:
        st.session_state[key] = workspace().load()[key]
    return st.session_state[key]


def current_dataset() -> Optional[dict]:
    """The dataset chosen in this tab: ``{"kind", "path", "label"}``, or None.

    A download or unzip this tab started selects its dataset when it finishes,
    whichever page is open then.
    """
    for kind in ("download", "unzip"):
        job = job_for(kind)
        if job is not None and job.state == "completed" and job.claim("selected"):
            st.session_state["dataset"] = job.view().result
    return _remembered("dataset")


def choose_dataset(choice: dict) -> None:
    st.session_state["dataset"] = choice
    workspace().update(dataset=choice)


def split_settings() -> tuple[int, float]:
    """(seed, test share) of the split every method uses on this tab's data."""
    return int(_remembered("seed")), float(_remembered("test_size"))


def set_split(seed: int, test_size: float) -> None:
    st.session_state["seed"], st.session_state["test_size"] = int(seed), float(test_size)
    workspace().update(seed=int(seed), test_size=float(test_size))


def remember(key: str, value) -> None:
    """Remember a run id (``last_run``, ``finetune_run``) for this tab and after a reload."""
    st.session_state[key] = value
    workspace().update(**{key: value})


def remembered_run(key: str) -> Optional[str]:
    return _remembered(key)


# --- datasets and models, cached -------------------------------------------------------------------

def _folder_signature(path: str) -> tuple:
    """Changes when photos are added to or removed from the folder or its class folders."""
    root = Path(path)
    try:
        entries = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
        return tuple((p.name, p.resolve().stat().st_mtime_ns) for p in entries)
    except OSError:
        return ()


@st.cache_resource(show_spinner=False, max_entries=8, ttl=3600)
def _scan(path: str, signature: tuple) -> Dataset:
    return load_dataset(path)


def scan_dataset(path: str) -> Dataset:
    """The dataset in ``path``, scanned once until its folders change. Do not modify the result."""
    return _scan(path, _folder_signature(path))


@st.cache_resource(show_spinner="Preparing the backbone…")
def extractor_for(backbone: str):
    """One feature extractor per backbone for the whole server; its model loads on first use."""
    from toptune_core.features.extractor import FeatureExtractor

    return FeatureExtractor(backbone)


@st.cache_resource(show_spinner=False, max_entries=6)
def _predictor(home: str, run_id: str):
    from toptune_core.predict import Predictor

    store = RunStore(home)
    run = store.get(run_id)
    extractor = extractor_for(run.backbone) if run.method == "toptune" else None
    return Predictor.from_run(run_id, store=store, extractor=extractor)


def predictor_for(run_id: str):
    """The loaded model of a completed run (kept in memory for the next photo)."""
    return _predictor(str(toptune_home()), run_id)


def store() -> RunStore:
    return RunStore()


def completed_runs() -> list[RunRecord]:
    return [r for r in store().list(status="completed") if r.accuracy is not None]


def run_label(run: RunRecord) -> str:
    """E.g. ``20261124-2231-ab12 · top-tuned tf_efficientnet_lite0 + Random Forest · accuracy 80.0 %``."""
    from toptune_core.methods.classifiers import CLASSIFIERS

    if run.method == "toptune":
        spec = CLASSIFIERS.get(run.classifier)
        how = f"top-tuned {run.backbone} + {spec.label if spec else run.classifier}"
    else:
        how = f"fine-tuned {run.backbone}"
    return f"{run.id} · {how} · accuracy {percent(run.accuracy)}"


def pick_run(label: str, runs: list[RunRecord], default_id: Optional[str], key: str) -> Optional[RunRecord]:
    """A select box of runs, starting on ``default_id`` when it is one of them."""
    if not runs:
        return None
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    index = ids.index(default_id) if default_id in ids else 0
    chosen = st.selectbox(label, ids, index=index, format_func=lambda i: run_label(by_id[i]), key=key)
    return by_id.get(chosen)


# --- numbers in plain words --------------------------------------------------------------------------

def seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 1:
        return f"{s:.2f} s"
    if s < 10:
        return f"{s:.1f} s"
    return f"{s:,.0f} s"


def percent(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


STAGE_NAMES = {
    "extract": "Reading the photos with the backbone (feature extraction)",
    "fit": "Training the classifier",
    "download": "Downloading",
    "unzip": "Unpacking the zip",
    "train": "Fine-tuning",
    "evaluate": "Testing on held-out photos",
    "load": "Loading",
}
UNIT_NAMES = {"images": "photos", "image": "photos"}


def progress_text(p: Progress) -> str:
    """E.g. ``Reading the photos ...: 120 of 300 photos · 41.2 photos/s · about 4.4 s left``."""
    unit = UNIT_NAMES.get(p.unit, p.unit)
    fmt = (lambda v: f"{v:,.1f}") if unit == "MB" else (lambda v: f"{v:,.0f}")
    text = f"{STAGE_NAMES.get(p.stage, p.stage.capitalize())}: {fmt(p.done)}"
    if p.total:
        text += f" of {fmt(p.total)}"
    text += f" {unit}"
    if p.rate:
        text += f" · {p.rate:,.1f} {unit}/s"
    if p.eta is not None and (p.fraction or 0) < 1:
        text += f" · about {seconds(p.eta)} left"
    if p.message:
        text += f" · {p.message}"
    return text


def draw_progress(p: Progress) -> None:
    st.progress(p.fraction if p.fraction is not None else 0.0, text=progress_text(p))


# --- background jobs ---------------------------------------------------------------------------------

def job_for(kind: str) -> Optional[Job]:
    """This tab's latest job of ``kind`` (restored from the workspace after a reload), if the server has it."""
    key = f"job:{kind}"
    if key not in st.session_state:
        st.session_state[key] = workspace().load()["jobs"].get(kind)
    return registry().get(st.session_state[key])


def start_job(kind: str, title: str, target: JobTarget, params: Optional[dict] = None) -> Job:
    job = registry().submit(kind, title, target, params=params)
    st.session_state[f"job:{kind}"] = job.id
    workspace().update(jobs={kind: job.id})
    return job


def draw_failure(view: JobView) -> None:
    if view.state == "cancelled":
        st.warning(f"{view.title}: cancelled. {view.error or ''}".strip())
    else:
        st.error(view.error or "The job failed.")
        if view.details:
            show_details(view.details)


def follow_job(job: Job, draw_finished: Callable[[JobView], None], *, every: float = 1.0) -> None:
    """Draw ``job``: live progress bars and a cancel button while it runs (a fragment rerunning every
    ``every`` seconds), then ``draw_finished(view)``. When the job ends while watched, the whole page reruns."""
    was_active = job.view().active

    def body() -> None:
        view = job.view()
        if view.active:
            st.markdown(f"**{view.title}** · running for {seconds(view.elapsed)}")
            if not view.stages:
                st.progress(0.0, text="Starting…")
            for p in view.stages:
                draw_progress(p)
            if view.cancel_requested:
                st.caption("Cancelling… it stops at the next step.")
            elif st.button("Cancel", key=f"cancel-{view.id}"):
                job.cancel()
                st.rerun(scope="fragment")
        elif was_active:
            st.rerun()
        else:
            draw_finished(view)

    st.fragment(run_every=every if was_active else None)(body)()


def job_is_running(kind: str) -> bool:
    job = job_for(kind)
    return job is not None and job.view().active
