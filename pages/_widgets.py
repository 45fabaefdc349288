"""Widgets every page shares: plain-word errors, formats, job progress, run pickers, thumbnails, guards.

Background work of every kind (a thread job, the fine-tune's process job) is
drawn by ONE ``follow_job``: a fragment that reruns on a timer while the job
runs. All work is done by ``toptune_core``; this module only lays out widgets.
"""

from __future__ import annotations

import io
import traceback
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional

import streamlit as st

from pages._router import link
from pages._state import (completed_runs, current_dataset, dataset_title, extractor_for, find_run, is_showcase,
                          ray_extractor_for, scan_dataset, settings, split_kind, split_settings)
from toptune_core.data import storage
from toptune_core.data.dataset import Dataset
from toptune_core.data.version_history import describe_changes, version_name, version_of
from toptune_core.data.versions import VersionedDataset
from toptune_core.errors import ImageError, RunNotFound, ToptuneError
from toptune_core.jobs.view import JobView
from toptune_core.progress import Progress
from toptune_core.runs.store import RunRecord

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


# --- guards: what a page needs before it can show anything -------------------------------------------

def need_dataset(note: str = "") -> Optional[tuple[dict, Dataset, int, float]]:
    """``(choice, dataset, seed, test share)`` after a line saying what will be trained on (``note`` ends it), or
    None after saying to choose a dataset first (with a link to Data)."""
    choice = current_dataset()
    if not choice:
        st.info("Choose a dataset first.")
        link("data", "Go to Data →")
        return None
    ds = scan_dataset(choice["path"])
    seed, test_size = split_settings()
    how = " (near-duplicates kept on one side)" if split_kind() == "grouped" else ""
    st.write(f"**Data:** {dataset_title(choice)}{version_note(ds)} · {len(ds):,} photos · {len(ds.classes)} classes · "
             f"{test_size:.0%} held out for testing{how} (seed {seed}){note}.")
    return choice, ds, seed, test_size


def version_note(ds: Dataset) -> str:
    """`` · your version v2: +5 photos, 1 moved`` for a dataset with edits, else empty."""
    if isinstance(ds, VersionedDataset) and ds.version.get("edit_ids"):
        return f" · your version {shown_version(ds)[0]}: {describe_changes(ds.version['summary'])}"
    return ""


def shown_version(ds: Dataset) -> tuple[str, str]:
    """``("v2", "v2 (not trained on yet)")``: the version's short name, and with a note when no run trained on it
    yet (``version_history.version_name``)."""
    name, trained = version_name(completed_runs(), version_of(ds))
    return name, name if trained else f"{name} (not trained on yet)"


def need_runs(hint: str) -> list[RunRecord]:
    """The completed runs, or [] after showing ``hint`` and a link to Top-tune."""
    runs = completed_runs()
    if not runs:
        st.info(hint)
        link("toptune", "Go to Top-tune →")
    return runs


# --- where features are extracted ----------------------------------------------------------------------

EXTRACT_ON = {"local": "This machine", "ray": "Ray cluster"}


def choose_extractor(backbone: str, views: Optional[str] = None, resolution: Optional[int] = None):
    """The extractor of ``backbone`` (with these views, at this input resolution): this machine's, or, when a Ray
    cluster is configured (``TOPTUNE_RAY_ADDRESS``) and chosen, one that extracts on the cluster."""
    address = settings().ray_address
    if address:
        st.radio("Feature extraction", list(EXTRACT_ON), format_func=EXTRACT_ON.get, horizontal=True,
                 key="tt_where", help=f"The Ray cluster at {address} reads the photos by their path here, "
                 "so they must be on storage its workers share; the features land in this machine's cache.")
    return chosen_extractor_for(backbone, views, resolution)


def chosen_extractor_for(backbone: str, views: Optional[str] = None, resolution: Optional[int] = None):
    """The extractor of ``backbone`` where ``choose_extractor``'s choice says (no widget: e.g. for a sweep)."""
    if settings().ray_address and st.session_state.get("tt_where") == "ray":
        return ray_extractor_for(backbone).reconfigured(views=views, resolution=resolution)
    return extractor_for(backbone, resolution).reconfigured(views=views)


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
    "cv": "Choosing the classifier by cross-validation on the training photos",
    "sweep": "Sweep",
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


# --- background jobs (thread jobs and the fine-tune's process job alike) ------------------------------

def draw_failure(view: JobView) -> None:
    if view.state == "cancelled":
        st.warning(f"{view.title}: cancelled. {view.error or ''}".strip())
    else:
        st.error(view.error or "The job failed.")
        if view.details:
            show_details(view.details)


def follow_job(job, draw_finished: Callable[[JobView], None], *, draw_running: Optional[Callable[[JobView], None]]
               = None, cancel_label: str = "Cancel", cancelling: Optional[str] = None, every: float = 1.0) -> None:
    """Draw ``job`` (anything with ``view()`` and ``cancel()``): live progress bars, ``draw_running(view)`` and a
    cancel button while it runs (a fragment rerunning every ``every`` seconds), then ``draw_finished(view)``.
    When the job ends while watched, the whole page reruns. ``cancelling``: a spinner text while cancel() runs."""
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
            elif st.button(cancel_label, key=f"cancel-{view.id}"):
                with st.spinner(cancelling) if cancelling else nullcontext():
                    job.cancel()
                if job.view().active:  # stops at its next step: follow it there
                    st.rerun(scope="fragment")
                st.rerun()  # stopped already (a process job waits for its process): redraw the whole page
            if draw_running is not None:
                draw_running(view)
        elif was_active:
            st.rerun()
        else:
            draw_finished(view)

    st.fragment(run_every=every if was_active else None)(body)()


# --- runs ---------------------------------------------------------------------------------------------

def run_label(run: RunRecord) -> str:
    """E.g. ``20261124-2231-ab12 · top-tuned tf_efficientnet_lite0 + Random Forest · accuracy 80.0 %``."""
    from toptune_core.methods.classifiers import CLASSIFIERS

    if run.method == "toptune":
        spec = CLASSIFIERS.get(run.classifier)
        how = f"top-tuned {run.backbone} + {spec.label if spec else run.classifier}"
    else:
        how = f"fine-tuned {run.backbone}"
    return f"{run.id} · {how} · accuracy {percent(run.accuracy)}" + (" · showcase" if is_showcase(run) else "")


def run_in_url() -> Optional[str]:
    """The run named in the page's URL (``?run=ID``) if this visitor may see it; else says "not found" (once) and
    gives None."""
    run_id = st.query_params.get("run")
    if not run_id:
        return None
    try:
        return find_run(run_id).id
    except RunNotFound as e:
        st.error(str(e))
        return None


def pick_run(label: str, runs: list[RunRecord], default_id: Optional[str], key: str) -> Optional[RunRecord]:
    """A select box of runs, starting on ``default_id`` when it is one of them."""
    if not runs:
        return None
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    labels = {r.id: run_label(r) for r in runs}  # made now: the labels need this session's visitor
    index = ids.index(default_id) if default_id in ids else 0
    wanted = st.session_state.pop(f"{key}:use", None)  # asked for elsewhere on the page ("Use the new model")
    if wanted in ids:
        st.session_state[key] = wanted  # set before the widget is drawn, so this run shows it
        index = 0  # the Session State value wins; another default beside it would draw a warning
    chosen = st.selectbox(label, ids, index=index, format_func=labels.__getitem__, key=key)
    return by_id.get(chosen)


# --- photos -------------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=3000)
def _thumbnail(path: str, version: str, size: int = 200) -> bytes | None:
    from toptune_core.data.images import load_rgb

    try:
        im = load_rgb(path, min_size=160)
    except ImageError:
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def thumbnail(path, size: int = 200) -> bytes | None:
    """A small JPEG (at most ``size`` px a side) of the photo at ``path``, a file or an ``s3://`` object (cached
    until it changes), or None if it cannot be read."""
    version = storage.stamp(path)
    return None if version is None else _thumbnail(str(path), version, size)
