"""Dataset versions in the dashboard (layout only; the work is ``toptune_core.data.versions``).

* The Data page's "Your changes" section: the version's id and edits since the original, each edit with
  an Undo button, and "Download this dataset version" (a zip of class folders).
* "Teach it" on Classify and Predictions: add photos to the training photos as a class (a new one may be
  typed), or fix the label of a photo of the dataset; then "Train again": the run's settings on the new
  version, in the same background job as the Top-tune page (job kind ``toptune``). On Classify the class
  starts on the model's answer (nothing for a photo it did not recognise: a choice is needed) and stays as
  chosen across reruns; "Added" and "Trained again" belong to the photos they are about and go when other
  photos are uploaded.

Versions are named ``v1``, ``v2``... everywhere (``version_history.version_name``), the hash in a tooltip.

The user's folder is never changed: every edit lives in the visitor's own workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st

from pages._state import (completed_runs, dataset_title, dataset_versions, feature_cache, find_run, job_for,
                          remember, scan_dataset, start_job, store, visitor)
from pages._widgets import (chosen_extractor_for, draw_failure, follow_job, friendly_errors, percent, shown_version,
                            version_note)
from toptune_core.data import storage
from toptune_core.data.version_export import version_zip
from toptune_core.data.version_history import (added_photo_name, describe_changes, retrain_settings, version_name,
                                               version_of)
from toptune_core.data.versions import VersionedDataset
from toptune_core.experiment import run_toptuning
from toptune_core.jobs.view import JobView
from toptune_core.reports import classifier_words
from toptune_core.runs.store import RunRecord

NEW_CLASS = "A new class…"
EDITS_SHOWN = 50


def dataset_line(choice: dict) -> str:
    """The sidebar's line: the dataset's name, the photo count of this visitor's version, and the version's name
    once it has edits: "Demo: bean leaf diseases (iBean) · 302 photos (your version v2)"; the label as it was
    given when the photos cannot be read now (the Data page says why)."""
    from toptune_core.errors import ToptuneError

    try:
        ds = scan_dataset(choice["path"])
    except ToptuneError:
        return str(choice.get("label", ""))
    line = f"{dataset_title(choice)} · {len(ds):,} photos"
    if isinstance(ds, VersionedDataset) and ds.version.get("edit_ids"):
        line += f" (your version {shown_version(ds)[0]})"
    return line


# --- the Data page ------------------------------------------------------------------------------------

def edits_section(path: str, label: str) -> None:
    """The edits of this visitor's version of ``path``, each undoable, and the version's download."""
    st.markdown("##### Your changes to these photos (dataset version)")
    versions = dataset_versions(path)
    ds = scan_dataset(path)
    edits = versions.edits
    version_id = version_of(ds)["id"]
    name, long_name = shown_version(ds)
    tip = f"Version id {version_id}: a fingerprint of its photos and labels. Runs record it; Compare lines versions up."
    if not edits:
        st.caption(f"Version **{long_name}**: the photos as they are. Photos added on the Classify or Predictions "
                   "page and labels fixed appear here; your folder itself is never changed.", help=tip)
    else:
        st.caption(f"Version **{long_name}**: {describe_changes(ds.version['summary'])} since the original. Your "
                   "folder itself is never changed; every change is kept in your workspace and can be undone.",
                   help=tip)
        for edit in list(reversed(edits))[:EDITS_SHOWN]:
            c1, c2 = st.columns([5, 1])
            c1.write(f"#{edit.id} · {edit.describe()}")
            if c2.button("Undo", key=f"undo_edit_{edit.id}", icon=":material/undo:"):
                with friendly_errors():
                    versions.undo(edit.id)
                    st.rerun()
        if len(edits) > EDITS_SHOWN:
            st.caption(f"… and {len(edits) - EDITS_SHOWN} older change(s).")
    def make_zip() -> bytes:  # runs in Streamlit's download thread, on click
        return version_zip(ds)

    st.download_button("Download this dataset version (zip of class folders)", data=make_zip,
                       file_name=f"{Path(path).name or 'dataset'}-{name}.zip", mime="application/zip",
                       on_click="ignore", icon=":material/download:", key="download_version",
                       help=f"{len(ds):,} photos of {label}, one folder per class as this version has them.")


# --- Classify and Predictions -------------------------------------------------------------------------

def evidence_caption(path, cls: str, distance: float) -> str:
    """A nearest training photo's caption: its class and distance, and "your photo NAME" for one the user added."""
    mine = added_photo_name(path)
    same = " (the same photo)" if distance < 0.005 else ""
    return (f"{cls} · distance {distance:.2f}{same}" + (f" · your photo {mine}, added to the training photos"
                                                          if mine else ""))


def class_choice(classes: list[str], key: str, default: Optional[str] = None, about: str = "") -> Optional[str]:
    """A class of the run, or a new one typed here (None until chosen or typed). It starts on ``default`` (None:
    nothing chosen, a choice is needed) each time ``about`` (the photos it is for) changes, and keeps the user's
    choice across reruns until then."""
    options = [*classes, NEW_CLASS]
    state, widget, kept = st.session_state, f"{key}_class", f"{key}_class_kept"
    if state.get(f"{key}_class_for") != about:
        state[f"{key}_class_for"] = about
        state[kept] = default if default in options else None
    state[widget] = state.get(kept)  # restored even if the widget was not drawn in between

    def remember_choice() -> None:
        state[kept] = state[widget]

    chosen = st.selectbox("Their class", options, key=widget, on_change=remember_choice,
                          placeholder="Choose the right class")
    if chosen is None:
        return None
    if chosen != NEW_CLASS:
        return chosen
    typed = st.text_input("Name of the new class", key=f"{key}_new_class", max_chars=80,
                          placeholder="e.g. bean_anthracnose")
    return typed if typed.strip() else None


def photos_signature(photos: list[tuple[str, bytes]]) -> str:
    """What identifies a set of uploaded photos: messages about them are shown only while they are on the page."""
    import hashlib

    h = hashlib.sha256()
    for name, data in photos:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def teach_photos(photos: list[tuple[str, bytes]], run: RunRecord, key: str, picker: str,
                 answer: Optional[str] = None) -> None:
    """'Add to the training photos as [class]' for uploaded photos, then 'Train again'. ``answer``: the model's
    class for them (the class chosen first), None when it did not recognise them (a class must be chosen)."""
    st.markdown("##### Teach the model")
    data = (run.params or {}).get("data") or run.dataset
    st.caption(f"Not recognised, or wrong? Add these photos to the training photos of "
               f"'{Path(data).name}' with their right class (a new class may be typed), then train again with "
               "the same settings. Your folder is not changed: the photos are kept in your workspace, as a new "
               "version of the dataset, and each addition can be undone on the Data page. "
               + ("The class starts on the model's answer: change it if the answer is wrong." if answer else
                  "Choose their class: the model gave none."))
    about = photos_signature(photos)
    names = [name for name, _ in photos]
    chosen = st.multiselect("Photos to add", names, default=names, key=f"{key}_photos")
    classes = list(run.params.get("classes") or [])
    label = class_choice(classes, key, default=answer, about=about)
    may_test = st.checkbox("Also use them to test models", key=f"{key}_may_test",
                           help="Off: they always train, so every version is scored on the same held-out photos. "
                                "On: the split may hold some of them out, like any photo of the folder.")
    if st.button(f"Add to the training photos as {label or '…'}", key=f"{key}_add", icon=":material/add_a_photo:",
                 disabled=not chosen or label is None):
        st.session_state.pop(f"{key}_added", None)  # a refused addition leaves no older "Added" beside its error
        with friendly_errors():
            added = dataset_versions(data).add_photos([p for p in photos if p[0] in chosen], label,
                                                      may_test=may_test)
            st.session_state[f"{key}_added"] = (about, len(added), label)
            st.rerun()  # the sidebar, drawn before this, counts the new version's photos
    done = st.session_state.get(f"{key}_added")
    if done and done[0] == about:
        st.success(f"Added {done[1]} photo(s) as {done[2]}. Train again to teach the model.")
    train_again(run, key, picker, about)


def fix_photos(rows: list, run: RunRecord, key: str, picker: str) -> None:
    """Predictions: give held-out photos their right class. A photo of the run's dataset is moved (its label is
    fixed); a photo of a separate test folder is added to the training photos."""
    if not rows:
        return
    st.markdown("##### Teach the model")
    data = (run.params or {}).get("data") or run.dataset
    st.caption("Wrong, or not recognised, because the photo's label is wrong or because the model never saw "
               "photos like it? Fix the label of a photo of the dataset, or add a photo of the test folder to "
               "the training photos; then train again with the same settings. Your folder is not changed.")
    by_name = {f"{Path(r.path).name} (true: {r.true}, predicted: {r.predicted})": r for r in rows}
    chosen = st.multiselect("Photos", list(by_name), key=f"{key}_photos")
    label = class_choice(list(run.params.get("classes") or []), key, about="predictions")
    if st.button(f"Give them the class {label or '…'}", key=f"{key}_fix", icon=":material/label:",
                 disabled=not chosen or label is None):
        with friendly_errors():
            versions = dataset_versions(data)
            version = scan_dataset(data)
            class_of = {str(p): (rel, version.classes[i]) for p, rel, i in zip(version.paths, version.relpaths,
                                                                              version.labels.tolist())}
            picked = [r.path for n, r in by_name.items() if n in chosen]
            inside = [class_of[p][0] for p in picked if p in class_of and class_of[p][1] != label]
            outside = [p for p in picked if p not in class_of]
            if inside and label not in version.classes:
                raise_new_class(label)  # checked before anything changes
            added = versions.add_photos([(Path(p).name, storage.read_bytes(p)) for p in outside], label) \
                if outside else []
            moved = [versions.move(rel, label) for rel in inside]
            st.session_state[f"{key}_added"] = (len(added) + len(moved), label)
            st.rerun()  # the sidebar, drawn before this, counts the new version's photos
    done = st.session_state.get(f"{key}_added")
    if done:
        st.success(f"{done[0]} photo(s) now have the class {done[1]}. Train again to teach the model.")
    train_again(run, key, picker, "predictions")


def raise_new_class(label: str) -> None:
    from toptune_core.errors import DatasetError

    raise DatasetError(f"A photo of the dataset can only get a class it has; '{label[:60]}' is new. Add new photos "
                       "as a new class on the Classify page.")


def train_again(run: RunRecord, key: str, picker: str, about: str = "") -> None:
    """'Train again': the run's settings, top-tuned on the current version of its folder, in a background job;
    then "Use the new model" selects it in the page's run picker (``picker``: its widget key). Its progress and
    result are shown while the photos it was started for (``about``) are on the page."""
    job = job_for("toptune")
    busy = job is not None and job.view().active
    if st.button("Train again", key=f"{key}_train_again", icon=":material/bolt:", disabled=busy,
                 help="The same backbone, classifier, views, input size and split as this model, on the photos "
                      "with your changes. Only new photos are read by the backbone."):
        with friendly_errors():
            visitor().check_new_run()
            job = start_retraining(run)
            st.session_state[f"{key}_retrained"] = (job.id, about)
    if job is not None and st.session_state.get(f"{key}_retrained") == (job.id, about):
        follow_job(job, lambda view: retrained(view, key, picker))


def start_retraining(run: RunRecord):
    """The Top-tune page's job, with the settings of ``run`` (everything the worker needs is passed in)."""
    settings = retrain_settings(run)
    run_store, cache = store(), feature_cache()
    extractor = chosen_extractor_for(settings["backbone"], settings["views"], settings["resolution"])

    def target(progress, should_cancel):
        return run_toptuning(**settings, store=run_store, cache=cache, extractor=extractor, progress=progress,
                             should_cancel=should_cancel).id

    return start_job("toptune", f"Training again: {settings['backbone']} + {classifier_words(settings['classifier'])}",
                     target,
                     {"home": str(run_store.root), "backbone": settings["backbone"],
                      "classifier": settings["classifier"]})


def retrained(view: JobView, key: str, picker: str) -> None:
    if view.state != "completed":
        draw_failure(view)
        return
    job = job_for("toptune")
    if job is not None and job.claim("remembered"):
        remember("last_run", view.result)
    new = find_run(view.result)
    version = new.params.get("version") or {}
    name, _ = version_name(completed_runs(), version)
    st.success(f"Trained again: run {new.id}, held-out accuracy {percent(new.accuracy)}, on version {name} "
               f"({describe_changes(version.get('changes') or {})} since the previous run; "
               f"{new.params.get('n_images')} photos, classes {', '.join(new.params.get('classes') or [])}).")
    if st.session_state.get(picker) != new.id:  # not the model the page uses yet
        if st.button("Use the new model", key=f"{key}_use_new", type="primary", icon=":material/eco:",
                     on_click=use_run, args=(picker, new.id)):
            st.rerun()  # the whole page: this button is drawn inside the job's fragment


def use_run(picker: str, run_id: str) -> None:
    """Ask the run picker ``picker`` (``pick_run``'s key) to select ``run_id`` when the page is drawn again."""
    st.session_state[f"{picker}:use"] = run_id
