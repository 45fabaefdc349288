"""The Data page's "Photos to check" panel: training photos whose label looks wrong, with evidence and actions.

The check (``toptune_core.trust.labels.check_labels``) runs as a background job on the current dataset version
(features from the cache, extracted on a miss, with progress); its result stays with the job. Each suspect
shows the photo, its nearest training photos filed under the given and the suggested class, and three actions
that edit the dataset version (``toptune_core.data.versions``, never the user's files): move to a class, leave
out, keep as it is. A handled photo leaves the list at once; "Check again" ranks the new version.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._state import (dataset_versions, extractor_for, feature_cache, job_for, job_is_running, scan_dataset,
                          start_job)
from pages._widgets import draw_failure, follow_job, friendly_errors, thumbnail
from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.data.versions import DatasetVersions
from toptune_core.trust.labels import LabelCheck, Suspect, check_labels

SUSPECTS_SHOWN = 8
NEIGHBOURS = 3


def _check_target(versions: DatasetVersions, extractor, cache):
    def target(progress, should_cancel) -> LabelCheck:
        return check_labels(versions.dataset(), extractor=extractor, cache=cache, skip=versions.reviewed,
                            progress=progress, should_cancel=should_cancel)

    return target


def photos_to_check(source: str) -> None:
    """The panel for the dataset at ``source``: a button that runs the check, then the suspects still open."""
    st.markdown("##### Photos to check")
    st.caption("Photos whose label looks wrong: a model trained without each photo (5 folds, near-duplicates kept "
               "together) gives another class a higher probability than the one it is filed under. Most suspect "
               "first. Moving or leaving out a photo changes the dataset version only, never your files.")
    versions = dataset_versions(source)
    job = job_for("labels")
    if job is not None and job.view().params.get("source") != source:
        job = None  # a check of another dataset
    done = job is not None and job.view().state == "completed"
    if st.button("Check again" if done else "Check the labels", icon=":material/fact_check:",
                 disabled=job_is_running("labels")):
        job = start_job("labels", "Checking the labels", _check_target(versions, extractor_for(DEFAULT_BACKBONE),
                                                                       feature_cache()), {"source": source})
    if job is None:
        return
    follow_job(job, lambda view: None if view.state == "completed" else draw_failure(view))
    view = job.view()
    if view.state == "completed":
        show_suspects(view.result, versions, scan_dataset(source))


def show_suspects(result: LabelCheck, versions: DatasetVersions, dataset) -> None:
    """The suspects of ``result`` that the current version (``dataset``) still has under their given class, not
    yet reviewed."""
    label_of = {rel: dataset.classes[i] for rel, i in zip(dataset.relpaths, dataset.labels.tolist())}
    path_of = dict(zip(dataset.relpaths, dataset.paths))
    reviewed = versions.reviewed
    still_open = [s for s in result.suspects if label_of.get(s.path) == s.given and s.path not in reviewed]
    handled = len(result.suspects) - len(still_open)
    estimate = ("" if result.n_likely_wrong is None
                else f" Confident learning (cleanlab) estimates that about {result.n_likely_wrong} labels are wrong.")
    st.write(f"**{len(still_open)} photos to check** of {result.n_checked:,} ({handled} handled since the check)."
             + estimate)
    if not still_open:
        st.success("No photo left to check: the model agrees with every other label.")
        return
    for s in still_open[:SUSPECTS_SHOWN]:
        suspect_card(s, result, dataset.classes, path_of, versions)
    if len(still_open) > SUSPECTS_SHOWN:
        st.caption(f"… and {len(still_open) - SUSPECTS_SHOWN} more; handle these to see the next ones.")


def _image(col, path, caption: str) -> None:
    thumb = thumbnail(path) if path is not None else None
    if thumb is None:
        col.caption(f"{caption} (cannot be shown)")
    else:
        col.image(thumb, caption=caption, width="stretch")


def suspect_card(s: Suspect, result: LabelCheck, classes: list[str], path_of: dict, versions: DatasetVersions
                 ) -> None:
    """One suspect: the photo, the nearest photos of both classes, and the three actions."""
    with st.container(border=True):
        top = st.columns([2, 3, 3])
        _image(top[0], path_of.get(s.path), s.path)
        top[0].markdown(f"Filed under **{s.given}**, looks like **{s.suggested}** · score {s.score:.2f}")
        for col, cls in zip(top[1:], (s.given, s.suggested)):
            col.caption(f"Most alike among the photos filed under {cls}")
            cells = col.columns(NEIGHBOURS)
            for cell, (rel, sim) in zip(cells, result.nearest(s.path, cls, k=NEIGHBOURS)):
                _image(cell, path_of.get(rel), f"{Path(rel).name} · {sim:.2f}")
        others = [c for c in classes if c != s.given]
        c1, c2, c3, c4 = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
        to = c1.selectbox("Move to class", others, index=others.index(s.suggested) if s.suggested in others else 0,
                          key=f"label_move_to:{s.path}")
        with friendly_errors():
            if c2.button("Move", key=f"label_move:{s.path}", icon=":material/drive_file_move:"):
                versions.move(s.path, to)
                st.rerun()
            if c3.button("Leave out", key=f"label_leave_out:{s.path}", icon=":material/block:"):
                versions.leave_out(s.path)
                st.rerun()
            if c4.button("Keep as it is", key=f"label_keep:{s.path}", icon=":material/check:"):
                versions.keep(s.path)
                st.rerun()
