"""The Data page's Eden Library chooser: the whole catalogue, searchable, a preset, names typed by hand.

Every dataset of ``toptune_core.data.eden_catalogue`` is offered, filtered by a
search over crop, condition and class; a preset button selects the datasets of
Eden's top-tuning notebook; any other Eden folder name can be typed into the
list. The chosen datasets download together in a background job (one
combined progress bar) and become one dataset with one class per plant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from pages._state import job_for, job_is_running, server_home, settings, start_job, workspace
from pages._widgets import follow_job
from toptune_core.data.dataset import eden_label, load_dataset
from toptune_core.data.eden import EDEN_BASE_URL, download_eden_datasets
from toptune_core.data.eden_catalogue import EDEN_CATALOGUE, EDEN_PRESETS, describe_name, search
from toptune_core.jobs.view import JobView
from toptune_core.progress import bytes_progress
from toptune_core.workspace import Workspace

NAMES_KEY = "eden_names"


def download_eden(names: list[str], cache_dir: Path, base_url: str, ws: Workspace):
    """The job target of an Eden download (everything it needs is passed in: workers never touch the session)."""
    def target(progress, should_cancel):
        root = download_eden_datasets(names, cache_dir=cache_dir, should_cancel=should_cancel, base_url=base_url,
                                      progress=bytes_progress(progress, message=f"{len(names)} dataset(s)"))
        ds = load_dataset(root)
        choice = {"kind": "eden", "path": str(root), "label": f"Eden Library: {', '.join(ds.classes)} "
                  f"({len(ds)} photos)", "eden": sorted(names)}
        ws.update(dataset=choice)
        return choice

    return target


def _select_preset(key: str) -> None:
    st.session_state[NAMES_KEY] = list(EDEN_PRESETS[key].names)


def catalogue_table(query: str) -> list[str]:
    """The catalogue's datasets matching ``query``, as a table; returns their names."""
    found = search(query)
    st.caption(f"{len(found)} of the {len(EDEN_CATALOGUE)} Eden datasets named in Eden's notebooks"
               + (f" match '{query}'." if query.strip() else "."))
    if found:
        st.dataframe(pd.DataFrame({"crop": [d.crop for d in found], "condition": [d.condition for d in found],
                                   "class": [d.label for d in found], "dataset folder": [d.name for d in found],
                                   "used in": [Path(d.notebook).stem for d in found]}),
                     hide_index=True, height=min(38 + 35 * len(found), 300), key="eden_table")
    return [d.name for d in found]


def choose_eden(on_finished: Callable[[JobView], None]) -> None:
    st.write("Eden Library datasets are photos of one crop, weed, pest or deficiency each; the datasets chosen "
             "together become one problem with one class per plant (the part of the folder name before the "
             "first '-'). They are downloaded once and kept; Eden's zips are 0.2 to 1.2 GB each.")
    query = st.text_input("Search by crop or condition", placeholder="e.g. tomato, weed, deficiency",
                          key="eden_search")
    matches = catalogue_table(query)
    for key, preset in EDEN_PRESETS.items():
        st.button(f"{preset.title} ({len(preset.names)} datasets)", key=f"eden_preset_{key}",
                  on_click=_select_preset, args=(key,), icon=":material/playlist_add_check:")
    chosen = list(st.session_state.get(NAMES_KEY) or [])
    options = matches + [n for n in chosen if n not in matches]
    names = st.multiselect("Eden datasets (or type another Eden folder name and press Enter)", options,
                           format_func=describe_name, key=NAMES_KEY, accept_new_options=True)
    classes = {eden_label(n) for n in names}
    if names:
        st.caption(f"{len(classes)} class(es): " + ", ".join(sorted(classes)) + ". Datasets whose names start "
                   "alike (e.g. two Tomato datasets) become one class.")
    if names and len(classes) < 2:
        st.info("Choose at least two datasets of different plants: each plant is one class.")
    busy = job_is_running("download")
    if st.button("Download and use", type="primary", disabled=len(classes) < 2 or busy):
        target = download_eden(names, server_home(), settings().eden_url or EDEN_BASE_URL, workspace())
        start_job("download", "Downloading from the Eden Library", target, {"names": names})
    job = job_for("download")
    if job is not None:
        follow_job(job, on_finished)
