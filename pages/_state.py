"""Per-visitor choices and shared resources, backed by the workspace.

Each tab keeps its choices (dataset, split, remembered runs, job ids) in
``st.session_state``, restored from the on-disk ``Workspace`` after a browser
reload. The environment is read here, once per visitor (``settings()``), and
the folders it names are passed to ``toptune_core`` explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st

from toptune_core.config import Settings
from toptune_core.data.dataset import Dataset, load_dataset
from toptune_core.features.cache import FeatureCache
from toptune_core.jobs.process import FinetuneJob
from toptune_core.jobs.thread import Job, JobTarget, registry
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.workspace import Workspace


def settings() -> Settings:
    """This visitor's settings: the environment, read on their first page."""
    if "_settings" not in st.session_state:
        st.session_state["_settings"] = Settings.from_env()
    return st.session_state["_settings"]


def home() -> Path:
    return settings().ensure_home()


def workspace() -> Workspace:
    return Workspace(home())


def store() -> RunStore:
    return RunStore(home())


def feature_cache() -> FeatureCache:
    return FeatureCache(settings=settings())


# --- remembered choices (per tab, restored from the workspace after a reload) ---------------------

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


def split_kind() -> str:
    """How photos are held out on this tab: "random" (stratified) or "grouped" (near-duplicates kept together)."""
    return str(_remembered("split"))


def set_split_kind(kind: str) -> None:
    st.session_state["split"] = kind
    workspace().update(split=kind)


def remember(key: str, value) -> None:
    """Remember a run id (``last_run``, ``finetune_run``) for this tab and after a reload."""
    st.session_state[key] = value
    workspace().update(**{key: value})


def remembered_run(key: str) -> Optional[str]:
    return _remembered(key)


def completed_runs() -> list[RunRecord]:
    return [r for r in store().list(status="completed") if r.accuracy is not None]


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


def job_is_running(kind: str) -> bool:
    job = job_for(kind)
    return job is not None and job.view().active


def finetune_job(run_id: str) -> FinetuneJob:
    """The process job of a recorded fine-tune (RunNotFound if it is not recorded)."""
    return FinetuneJob.attach(run_id, store_root=home())


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
def _extractor(backbone: str, _settings: Settings):
    from toptune_core.features.extractor import FeatureExtractor

    return FeatureExtractor(backbone, settings=_settings)


def extractor_for(backbone: str):
    """One feature extractor per backbone for the whole server; its model loads on first use."""
    return _extractor(backbone, settings())


@st.cache_resource(show_spinner=False)
def _ray_extractor(backbone: str, address: str, _settings: Settings):
    from toptune_core.features.distributed import RayFeatureExtractor

    return RayFeatureExtractor(backbone, address=address, settings=_settings)


def ray_extractor_for(backbone: str):
    """A feature extractor that extracts on the configured Ray cluster (``TOPTUNE_RAY_ADDRESS``)."""
    return _ray_extractor(backbone, settings().ray_address, settings())


@st.cache_resource(show_spinner=False, max_entries=6)
def _predictor(home_dir: str, run_id: str):
    from toptune_core.predict import Predictor

    runs = RunStore(home_dir)
    run = runs.get(run_id)
    extractor = extractor_for(run.backbone) if run.method == "toptune" else None
    return Predictor.from_run(run_id, store=runs, extractor=extractor)


def predictor_for(run_id: str):
    """The loaded model of a completed run (kept in memory for the next photo)."""
    return _predictor(str(home()), run_id)
