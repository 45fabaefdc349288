"""The Data page's "Photos to check" panel: training photos whose label looks wrong, with evidence and actions.

The check (``toptune_core.trust.labels.check_labels``) runs as a background job on the current dataset version
(features from the cache, extracted on a miss, with progress); its result stays with the job. Each suspect
shows the photo, its nearest training photos filed under the given and the suggested class, and three actions
that edit the dataset version (``toptune_core.data.versions``, never the user's files): move to a class, leave
out, keep as it is. A handled photo leaves the list at once; "Check again" ranks the new version and says how
its list compares with the previous one (photos near the border of two classes come and go as the check's models
are trained again on the corrected labels). Numbers come with words: how suspect, how alike; photos the user
added are named by their own file names.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._state import (dataset_versions, extractor_for, feature_cache, job_for, job_is_running, scan_dataset,
                          start_job)
from pages._widgets import draw_failure, follow_job, friendly_errors, thumbnail
from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.data.versions import DatasetVersions, shown_name
from toptune_core.trust.labels import LabelCheck, Suspect, check_labels

SUSPECTS_SHOWN = 8
NEIGHBOURS = 3
THUMB_PX = 320


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
        if done:  # what the new list is compared with
            before = job.view().result
            st.session_state["label_check_before"] = (str(versions.source), {s.path for s in before.suspects},
                                                      before.n_likely_wrong)
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
    explain_list(result, str(versions.source))
    if not still_open:
        st.success("No photo left to check: the model agrees with every other label.")
        return
    for s in still_open[:SUSPECTS_SHOWN]:
        suspect_card(s, result, dataset.classes, path_of, versions)
    if len(still_open) > SUSPECTS_SHOWN:
        st.caption(f"… and {len(still_open) - SUSPECTS_SHOWN} more; handle these to see the next ones.")


def explain_list(result: LabelCheck, source: str) -> None:
    """Why the list is longer than cleanlab's estimate, and, after "Check again", how it compares with the
    previous list of the same dataset."""
    st.caption("The list holds every photo for which the check's model (trained without it) prefers another class; "
               "cleanlab's estimate counts only those it is confident about, so the list is longer. Photos near "
               "the border between two classes are on it too: look at the most suspect first.")
    before = st.session_state.get("label_check_before")
    if not before or before[0] != source:
        return
    paths = {s.path for s in result.suspects}
    kept, new = len(paths & before[1]), len(paths - before[1])
    st.caption(f"Checked again on your corrected version: {kept} of these photos were on the previous list and "
               f"{new} are new. After labels are fixed the check's models are trained again on the new labels, so "
               "photos near the border of two classes come and go; the photos you kept or moved are not listed "
               "again." + ("" if before[2] is None or result.n_likely_wrong is None else
                           f" cleanlab's estimate went from {before[2]} to {result.n_likely_wrong}."))


def how_suspect(score: float) -> str:
    """A suspect's score in words (1 - cleanlab's label quality: 0.5 to 1 for a suspect, higher: more likely
    wrong)."""
    words = "very likely wrong" if score >= 0.9 else "likely wrong" if score >= 0.7 else "possibly wrong"
    return f"{words} (score {score:.2f} of 1)"


def _image(col, path, caption: str) -> None:
    thumb = thumbnail(path, THUMB_PX) if path is not None else None
    if thumb is None:
        col.caption(f"{caption} (cannot be shown)")
    else:
        col.image(thumb, caption=caption, width="stretch")


def suspect_card(s: Suspect, result: LabelCheck, classes: list[str], path_of: dict, versions: DatasetVersions
                 ) -> None:
    """One suspect: the photo and the nearest photos filed under the given class on one row, the actions and the
    nearest photos filed under the suggested class on the next (big enough to see the leaf)."""
    names = versions.names

    def name(rel: str) -> str:
        shown = shown_name(rel, names)
        return f"your photo {shown}" if shown != rel else Path(rel).name

    with st.container(border=True):
        for row, cls in enumerate((s.given, s.suggested)):
            st.caption(f"Most alike among the photos filed under **{cls}** ("
                       + ("the class it is filed under), beside the photo:" if row == 0 else "the suggestion):"))
            cols = st.columns(1 + NEIGHBOURS)
            if row == 0:
                _image(cols[0], path_of.get(s.path), name(s.path))
            else:
                actions = cols[0]
            for cell, (rel, sim) in zip(cols[1:], result.nearest(s.path, cls, k=NEIGHBOURS)):
                _image(cell, path_of.get(rel), f"{name(rel)} · {sim:.0%} alike")
        with actions:
            st.markdown(f"Filed under **{s.given}**, looks like **{s.suggested}**: {how_suspect(s.score)}.")
            others = [c for c in classes if c != s.given]
            to = st.selectbox("Move to class", others,
                              index=others.index(s.suggested) if s.suggested in others else 0,
                              key=f"label_move_to:{s.path}")
            c2, c3, c4 = st.columns(3)
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
