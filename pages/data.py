"""Data: choose the photos (demo, Eden Library, a local folder or an uploaded zip) and look at them.

On a shared server no path can be typed: the folder source becomes a list of
the folders the operator allows, and uploads go to the visitor's own folder.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._charts import class_counts_chart
from pages._router import PAGES, through_router
from pages._state import (choose_dataset, current_dataset, job_is_running, job_for, scan_dataset, server_home,
                          set_split, settings, split_settings, start_job, visitor, workspace)
from pages._widgets import draw_failure, follow_job, friendly_errors, thumbnail
from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, get_backbone
from toptune_core.data.dataset import load_dataset
from toptune_core.data.eden import EDEN_BASE_URL, EDEN_CATALOGUE, download_eden_datasets, eden_label
from toptune_core.data.uploads import extract_uploaded_zip, save_uploaded_zip
from toptune_core.jobs.view import JobView
from toptune_core.progress import Progress
from toptune_core.reports import describe_sizes, image_sizes
from toptune_core.shared.paths import offered_folders, resolve_inside
from toptune_core.workspace import Workspace, demo_choice

THUMBS_PER_CLASS = 4
MAX_CLASSES_SHOWN = 12

through_router()
st.title("1 · Data")

def dataset_job_finished(view: JobView) -> None:
    """A finished download or unzip: select the dataset it produced (once), or say what went wrong."""
    if view.state != "completed":
        draw_failure(view)
    else:  # current_dataset() has selected it
        st.success(f"Ready: {view.result['label']}.")


def download_eden(names: list[str], cache_dir: Path, base_url: str, ws: Workspace):
    """The job target of an Eden download (everything it needs is passed in: workers never touch the session)."""
    def target(progress, should_cancel):
        def on_bytes(done: int, total, rate: float) -> None:
            mb = 2 ** 20
            eta = (total - done) / rate if total and rate else None
            progress(Progress("download", done / mb, total / mb if total else None, "MB", rate / mb if rate else None,
                              eta, 0.0, f"{len(names)} dataset(s)"))

        root = download_eden_datasets(names, cache_dir=cache_dir, progress=on_bytes, should_cancel=should_cancel,
                                      base_url=base_url)
        ds = load_dataset(root)
        crops = ", ".join(ds.classes)
        choice = {"kind": "eden", "path": str(root), "label": f"Eden Library: {crops} ({len(ds)} photos)",
                  "eden": sorted(names)}
        ws.update(dataset=choice)
        return choice

    return target


def unzip_upload(zip_path: Path, name: str, ws: Workspace):
    def target(progress, should_cancel):
        root = extract_uploaded_zip(zip_path, progress=progress, should_cancel=should_cancel)
        ds = load_dataset(root)
        choice = {"kind": "upload", "path": str(root), "label": f"Uploaded zip {name} ({len(ds)} photos)"}
        ws.update(dataset=choice)
        return choice

    return target


def demo_source() -> None:
    st.write("300 photos of bean leaves from fields in Uganda (iBean, MIT licence), 100 per class: "
             "angular leaf spot, bean rust and healthy. It ships with this tool and works offline.")
    if st.button("Use the demo dataset", type="primary"):
        choose_dataset(demo_choice())
        st.rerun()


def eden_source() -> None:
    st.write("Eden Library datasets are photos of one crop or weed each; several chosen together become "
             "one problem with one class per plant. They are downloaded once and kept.")
    labels = {d.name: f"{d.crop} · {d.condition} (about {d.approx_mb:,} MB)" for d in EDEN_CATALOGUE}
    names = st.multiselect("Eden datasets", list(labels), format_func=labels.get, key="eden_names")
    classes = {eden_label(n) for n in names}
    if names and len(classes) < 2:
        st.info("Choose at least two datasets of different plants: each plant is one class.")
    busy = job_is_running("download")
    if st.button("Download and use", type="primary", disabled=len(classes) < 2 or busy):
        target = download_eden(names, server_home(), settings().eden_url or EDEN_BASE_URL, workspace())
        start_job("download", "Downloading from the Eden Library", target, {"names": names})
    job = job_for("download")
    if job is not None:
        follow_job(job, dataset_job_finished)


def local_folder_source() -> None:
    """Local mode only: any folder of this computer, by its path."""
    path = st.text_input("Folder path", placeholder="/home/me/photos/beans", key="folder_path")
    st.caption("The folder holds one sub-folder of photos per class, named after the class "
               "(or Eden Library dataset folders side by side).")
    if st.button("Use this folder", type="primary", disabled=not path.strip()):
        with friendly_errors():
            ds = load_dataset(path.strip())
            choose_dataset({"kind": "folder", "path": str(ds.root), "label": f"Folder {ds.root.name} "
                            f"({len(ds)} photos)"})
            st.rerun()


def server_folder_source() -> None:
    """Shared mode: one of the folders the operator allows (``TOPTUNE_DATA_ROOTS``), from a list; no path typed."""
    roots = settings().data_roots
    offered = {str(path): label for label, path in offered_folders(roots)}
    chosen = st.selectbox("Folder on this server", list(offered), format_func=offered.get, key="server_folder")
    st.caption("The folders this server offers. A dataset folder holds one sub-folder of photos per class.")
    if st.button("Use this folder", type="primary", disabled=chosen is None):
        with friendly_errors():
            ds = scan_dataset(str(resolve_inside(chosen, roots)))  # refused outside the allowed folders
            choose_dataset({"kind": "server", "path": str(ds.root), "label": f"Server folder {offered[chosen]} "
                            f"({len(ds)} photos)"})
            st.rerun()


def zip_source() -> None:
    st.write("A zip of the dataset folder: one sub-folder of photos per class, named after the class.")
    limit = settings().limits.zip_mb
    upload = st.file_uploader(f"Dataset zip (up to {limit:,g} MB)", type=["zip"], key="zip_upload")
    busy = job_is_running("unzip")
    if st.button("Unpack and use", type="primary", disabled=upload is None or busy):
        with friendly_errors():
            data = upload.getvalue()
            me = visitor()
            if len(data) <= limit * 2 ** 20:
                me.check_room(2 * len(data))  # the zip and what it unpacks to
            zip_path = save_uploaded_zip(upload.name, data, folder=me.uploads_dir, max_mb=limit)
            start_job("unzip", f"Unpacking {upload.name}", unzip_upload(zip_path, upload.name, workspace()),
                      {"zip": upload.name})
    job = job_for("unzip")
    if job is not None:
        follow_job(job, dataset_job_finished)


def sources() -> dict:
    """The data sources of this mode: in shared mode no path can be typed, only allowed folders chosen."""
    found = {"Demo dataset": demo_source, "Eden Library": eden_source}
    if not settings().shared:
        found["Folder on this computer"] = local_folder_source
    elif settings().data_roots:
        found["Folder on this server"] = server_folder_source
    found["Upload a zip"] = zip_source
    return found


def choose_source() -> None:
    options = sources()
    source = st.radio("Where are your photos?", list(options), horizontal=True, key="data_source")
    options[source]()


@st.cache_data(show_spinner=False, max_entries=32)
def sizes_of(paths: tuple[str, ...], signature: str):
    return image_sizes([Path(p) for p in paths])


def show_dataset() -> None:
    choice = current_dataset()
    if not choice:
        st.info("No dataset chosen yet. The demo dataset is a good start.")
        return
    ds = scan_dataset(choice["path"])
    counts = ds.class_counts()
    st.subheader(choice["label"])
    st.caption(f"Folder: {ds.root.name if visitor().shared else ds.root}")
    c1, c2, c3 = st.columns(3)
    c1.metric("Photos", f"{len(ds):,}")
    c2.metric("Classes", len(ds.classes))
    c3.metric("Files skipped", len(ds.skipped))
    for warning in ds.warnings:
        st.warning(warning)

    st.plotly_chart(class_counts_chart(counts), key="class_counts")

    st.markdown("##### A few photos of each class")
    shown = ds.classes[:MAX_CLASSES_SHOWN]
    for i, cls in enumerate(shown):
        paths = [p for p, label in zip(ds.paths, ds.labels) if label == i][:THUMBS_PER_CLASS]
        st.markdown(f"**{cls}** · {counts[cls]:,} photos")
        cols = st.columns(THUMBS_PER_CLASS)
        for col, p in zip(cols, paths):
            thumb = thumbnail(p)
            if thumb is None:
                col.caption(f"{p.name}: cannot be read")
            else:
                col.image(thumb, caption=p.name, width="stretch")
    if len(ds.classes) > len(shown):
        st.caption(f"… and {len(ds.classes) - len(shown)} more classes.")

    sizes = sizes_of(tuple(str(p) for p in ds.paths), ds.fingerprint())
    line, size_warnings = describe_sizes(sizes, get_backbone(DEFAULT_BACKBONE).input_size)
    st.markdown("##### Photo sizes")
    st.write(line)
    for warning in size_warnings:
        st.warning(warning)
    if ds.skipped:
        with st.expander(f"{len(ds.skipped)} file(s) skipped"):
            st.dataframe({"file": [s[0] for s in ds.skipped], "why": [s[1] for s in ds.skipped]}, hide_index=True)

    st.markdown("##### Testing")
    seed, test_size = split_settings()
    c1, c2 = st.columns(2)
    share = c1.slider("Share of photos held out for testing (%)", 10, 50, int(round(test_size * 100)), step=5,
                      help="These photos are never used for training; every method is tested on the same ones.")
    new_seed = c2.number_input("Split seed", min_value=0, max_value=10_000, value=seed, step=1,
                               help="Another seed holds out other photos.")
    if share / 100 != test_size or new_seed != seed:
        set_split(int(new_seed), share / 100)
    st.page_link(PAGES["toptune"], label="Next: top-tune a model on these photos →", icon=":material/bolt:")


with friendly_errors():
    choose_source()
st.divider()
with friendly_errors():
    show_dataset()
