"""Per-visitor choices and shared resources, backed by the visitor's workspace.

Every page reads runs, jobs and datasets only through here, and so only
through the session's visitor (``pages._visitor``): in shared mode their own
private folder, plus the showcase runs read-only; a run id or job id of
another visitor is "not found". Each tab keeps its choices (dataset, split,
remembered runs, job ids) in ``st.session_state``, restored from the
visitor's on-disk ``Workspace`` after a browser reload. The environment is read
here, once per visitor (``settings()``), and the folders it names are passed to
``toptune_core`` explicitly. Shared by everyone: the feature cache, the
backbones, the downloads (``server_home()``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import streamlit as st

from pages import _visitor
from toptune_core.config import Settings
from toptune_core.data import storage
from toptune_core.data.dataset import Dataset
from toptune_core.data.versions import DatasetVersions, read_version
from toptune_core.features.cache import FeatureCache
from toptune_core.jobs.process import FinetuneJob
from toptune_core.jobs.thread import Job, JobTarget, registry
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.shared.paths import check_photos_inside, resolve_inside
from toptune_core.shared.visitors import Visitor
from toptune_core.workspace import Workspace


def settings() -> Settings:
    """This visitor's settings: the environment, read on their first page."""
    if "_settings" not in st.session_state:
        st.session_state["_settings"] = Settings.from_env()
    return st.session_state["_settings"]


def visitor() -> Visitor:
    """This session's visitor (local mode: the one local user)."""
    return _visitor.current(settings())


def home() -> Path:
    """This visitor's private folder (local mode: the data folder)."""
    return visitor().home


def server_home() -> Path:
    """The server's data folder: what every visitor shares (downloads, the feature cache)."""
    return settings().ensure_home()


def workspace() -> Workspace:
    return visitor().workspace()


def store() -> RunStore:
    """This visitor's own runs."""
    return visitor().store()


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


def dataset_title(choice: dict) -> str:
    """The chosen dataset's name without the photo count its label was given when chosen ("Demo: bean leaf
    diseases (iBean)"): the count shown beside it is the current version's."""
    import re

    label = re.sub(r",?\s*[\d,]+ photos\)$", ")", str(choice.get("label", "")))
    return label.removesuffix(" ()")


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
    """The completed runs this visitor may use: their own, then the showcase runs."""
    return visitor().completed_runs()


def find_run(run_id: str) -> RunRecord:
    """A run this visitor may see, by id; ``RunNotFound`` ("not found in your workspace") otherwise."""
    return visitor().find_run(run_id)[1]


def is_showcase(run: RunRecord) -> bool:
    return visitor().is_showcase(run)


# --- background jobs ---------------------------------------------------------------------------------

def job_for(kind: str) -> Optional[Job]:
    """This tab's latest job of ``kind`` (restored from the workspace after a reload), if the server has it."""
    key = f"job:{kind}"
    if key not in st.session_state:
        st.session_state[key] = workspace().load()["jobs"].get(kind)
    return registry().get(st.session_state[key], owner=visitor().key)


def active_jobs() -> list[Job]:
    """This visitor's running background jobs."""
    return registry().list(active=True, owner=visitor().key)


def start_job(kind: str, title: str, target: JobTarget, params: Optional[dict] = None) -> Job:
    """Start a background job for this visitor (``LimitReached`` when they already run as many as allowed)."""
    me = visitor()
    me.check_job_slot(j.title for j in active_jobs())
    job = registry().submit(kind, title, target, params=params, owner=me.key)
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
    """Changes when photos are added to or removed from the folder or its class folders (an object-store prefix:
    every minute, when it is listed again)."""
    if storage.is_url(path):
        return ("listed", int(time.time() // 60))
    root = Path(path)
    try:
        entries = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
        return tuple((p.name, p.resolve().stat().st_mtime_ns) for p in entries)
    except OSError:
        return ()


def _edits_signature(path: str) -> tuple:
    """Changes when this visitor's edit list of the folder changes (``data.versions``)."""
    try:
        st_ = DatasetVersions(home(), path).path.stat()
        return (st_.st_mtime_ns, st_.st_size)
    except OSError:
        return ()


@st.cache_resource(show_spinner=False, max_entries=8, ttl=3600)
def _scan(path: str, signature: tuple, home_dir: str, edits: tuple) -> Dataset:
    return read_version(home_dir, path)


def scan_dataset(path: str) -> Dataset:
    """The dataset in ``path`` as this visitor's version of it (their edit list applied, ``data.versions``), read
    once until its folders or the edits change. Do not modify the result.

    Shared mode: only a folder (and photos) inside what this visitor may use (``PathNotAllowed`` otherwise)."""
    if not visitor().shared:
        return _scan(path, _folder_signature(path), str(home()), _edits_signature(path))
    roots = visitor().dataset_roots(settings())
    real = str(resolve_inside(path, roots))
    return _scan_inside(real, _folder_signature(real), tuple(str(r) for r in roots), str(home()),
                        _edits_signature(real))


@st.cache_resource(show_spinner=False, max_entries=32, ttl=3600)
def _scan_inside(path: str, signature: tuple, roots: tuple[str, ...], home_dir: str, edits: tuple) -> Dataset:
    ds = read_version(home_dir, path)
    check_photos_inside(ds, [storage.location(r) for r in roots])
    return ds


def dataset_versions(path: str) -> DatasetVersions:
    """This visitor's edit list of the dataset folder ``path`` (shared mode: within their disk limit)."""
    me = visitor()
    if me.shared:
        path = str(resolve_inside(path, me.dataset_roots(settings())))
    return DatasetVersions(me.home, path, check_room=me.check_room)


@st.cache_resource(show_spinner="Preparing the backbone…")
def _extractor(backbone: str, resolution: Optional[int], _settings: Settings):
    from toptune_core.features.extractor import FeatureExtractor

    return FeatureExtractor(backbone, settings=_settings, resolution=resolution)


def extractor_for(backbone: str, resolution: Optional[int] = None):
    """One feature extractor per backbone and input resolution for the whole server (a view set is a light copy
    of it: ``FeatureExtractor.reconfigured``); its model loads on first use."""
    return _extractor(backbone, resolution, settings())


@st.cache_resource(show_spinner=False)
def _ray_extractor(backbone: str, address: str, _settings: Settings):
    from toptune_core.features.distributed import RayFeatureExtractor

    return RayFeatureExtractor(backbone, address=address, settings=_settings)


def ray_extractor_for(backbone: str):
    """A feature extractor that extracts on the configured Ray cluster (``TOPTUNE_RAY_ADDRESS``)."""
    return _ray_extractor(backbone, settings().ray_address, settings())


@st.cache_resource(show_spinner=False, max_entries=6)
def _predictor(store_root: str, run_id: str, model_sums: Optional[str]):
    from toptune_core.predict import Predictor

    runs = RunStore(store_root)
    run = runs.get(run_id)
    extractor = extractor_for(run.backbone) if run.method == "toptune" else None
    return Predictor.from_run(run_id, store=runs, extractor=extractor)


def predictor_for(run_id: str):
    """The loaded model of a completed run this visitor may use (kept in memory for the next photo)."""
    runs, run = visitor().find_run(run_id)
    # keyed by the model files' checksums too: a progressive run's final model replaces its first one
    return _predictor(str(runs.root), run_id, run.model_sha256)
