"""Data: choose the photos (demo, Eden Library, a local folder, object storage or an uploaded zip) and look at them.

On a shared server no path can be typed: the folder source becomes a list of
the folders (and ``s3://`` prefixes) the operator allows, and uploads go to the
visitor's own folder.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._charts import class_counts_chart
from pages._router import PAGES, through_router
from pages._eden import choose_eden
from pages._suspects import photos_to_check
from pages._state import (choose_dataset, current_dataset, dataset_title, dataset_versions, extractor_for,
                          feature_cache, home, job_is_running, job_for, scan_dataset, set_split, set_split_kind,
                          settings, split_kind, split_settings, start_job, visitor, workspace)
from pages._versions import edits_section
from pages._widgets import draw_failure, follow_job, friendly_errors, thumbnail
from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, get_backbone
from toptune_core.data import storage
from toptune_core.data.dataset import load_dataset
from toptune_core.data.duplicates import DUPLICATE_THRESHOLD, REFERENCE_BACKBONE
from toptune_core.data.uploads import extract_uploaded_zip, save_uploaded_zip
from toptune_core.data.versions import ADDED_PREFIX, VersionedDataset, shown_name
from toptune_core.jobs.view import JobView
from toptune_core.features.cache import get_features, photos_not_cached
from toptune_core.leakage import data_leakage
from toptune_core.reports import describe_sizes, image_sizes
from toptune_core.shared.paths import offered_folders, resolve_inside
from toptune_core.workspace import Workspace, demo_choice

THUMBS_PER_CLASS = 4
MAX_CLASSES_SHOWN = 12
SPLIT_LABELS = {"random": "Random (stratified by class)", "grouped": "Grouped: near-duplicates kept on one side"}
PAIRS_SHOWN = 4
NEW_PHOTOS_READ_HERE = 10  # a version's new photos read at once for the near-duplicate check (more: a button)

through_router()
st.title("1 · Data")

def dataset_job_finished(view: JobView) -> None:
    """A finished download or unzip: select the dataset it produced (once), or say what went wrong."""
    if view.state != "completed":
        draw_failure(view)
    else:  # current_dataset() has selected it
        st.success(f"Ready: {view.result['label']}.")


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
    choose_eden(dataset_job_finished)


def _typed_source(kind: str, key: str, what: str, placeholder: str, caption: str, label: str) -> None:
    """A path or URL typed by the user in the text input ``key`` (local mode only), read with ``load_dataset`` when
    its button is pressed; ``label`` names the chosen dataset ({root}, {n} filled in)."""
    typed = st.text_input(what, placeholder=placeholder, key=key)
    st.caption(caption)
    if st.button(f"Use this {'prefix' if kind == 's3' else 'folder'}", type="primary", disabled=not typed.strip()):
        with friendly_errors():
            ds = load_dataset(typed.strip())
            choose_dataset({"kind": kind, "path": str(ds.root), "label": label.format(root=ds.root, n=len(ds))})
            st.rerun()


def local_folder_source() -> None:
    """Local mode only: any folder of this computer, by its path."""
    _typed_source("folder", "folder_path", "Folder path", "/home/me/photos/beans",
                  "The folder holds one sub-folder of photos per class, named after the class "
                  "(or Eden Library dataset folders side by side).", "Folder {root.name} ({n} photos)")


def object_storage_source() -> None:
    """Local mode only: an ``s3://`` prefix, read with this computer's AWS credentials and endpoint."""
    _typed_source("s3", "s3_url", "Object storage URL", "s3://my-bucket/photos/beans",
                  "The prefix holds one sub-prefix of photos per class (s3://BUCKET/PREFIX/CLASS/photo.jpg). "
                  "Credentials and endpoint come from the usual AWS settings (AWS_PROFILE or AWS_ACCESS_KEY_ID, "
                  "AWS_ENDPOINT_URL for MinIO and other S3-compatible stores).", "Object storage {root} ({n} photos)")


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
        found["Object storage (S3)"] = object_storage_source
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
    return image_sizes([storage.location(p) for p in paths])


def show_dataset() -> None:
    choice = current_dataset()
    if not choice:
        st.info("No dataset chosen yet. The demo dataset is a good start.")
        return
    ds = scan_dataset(choice["path"])
    counts = ds.class_counts()
    st.subheader(dataset_title(choice))
    st.caption(f"Folder: {ds.root.name if visitor().shared else ds.root}")
    c1, c2, c3 = st.columns(3)
    c1.metric("Photos", f"{len(ds):,}")
    c2.metric("Classes", len(ds.classes))
    c3.metric("Files skipped", len(ds.skipped))
    for warning in ds.warnings:
        st.warning(warning)

    st.plotly_chart(class_counts_chart(counts), key="class_counts")
    with friendly_errors():
        edits_section(choice["path"], choice["label"])

    st.markdown("##### A few photos of each class")
    shown = ds.classes[:MAX_CLASSES_SHOWN]
    name_of = photo_names(ds, choice["path"])
    for i, cls in enumerate(shown):
        paths = [p for p, label in zip(ds.paths, ds.labels) if label == i][:THUMBS_PER_CLASS]
        st.markdown(f"**{cls}** · {counts[cls]:,} photos")
        cols = st.columns(THUMBS_PER_CLASS)
        for col, p in zip(cols, paths):
            thumb = thumbnail(p)
            if thumb is None:
                col.caption(f"{name_of.get(str(p), p.name)}: cannot be read")
            else:
                col.image(thumb, caption=name_of.get(str(p), p.name), width="stretch")
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
    kinds = list(SPLIT_LABELS)
    kind = st.radio("How photos are held out", kinds, index=kinds.index(split_kind()), format_func=SPLIT_LABELS.get,
                    horizontal=True, key="data_split_kind",
                    help="Grouped: photos that are near-duplicates of each other (below) are all trained on or all "
                         "held out, so no held-out photo has a near-twin among the training photos. Every method "
                         "uses the same split.")
    if kind != split_kind():
        set_split_kind(kind)
    with friendly_errors():  # e.g. a grouped split a class's photos cannot make: said here, the rest still shows
        near_duplicates(ds, int(new_seed), share / 100, kind)
    with friendly_errors():
        photos_to_check(choice["path"])
    st.page_link(PAGES["toptune"], label="Next: top-tune a model on these photos →", icon=":material/bolt:")


def photo_names(ds, path: str) -> dict[str, str]:
    """Photo path -> the name shown: the file name, or "your photo NAME" for a photo the user added."""
    names = dataset_versions(path).names
    return {str(p): f"your photo {shown_name(rel, names)}" for p, rel in zip(ds.paths, ds.relpaths)
            if rel.startswith(ADDED_PREFIX)}


@st.cache_data(show_spinner="Looking for near-duplicates…", max_entries=32)
def leakage_of(path: str, fingerprint: str, seed: int, test_size: float, kind: str, home_dir: str) -> dict:
    return data_leakage(scan_dataset(path), seed=seed, test_size=test_size, split=kind, cache=feature_cache(),
                        extractor=extractor_for(REFERENCE_BACKBONE))


def near_duplicates(ds, seed: int, test_size: float, kind: str) -> None:
    """Near-duplicate photos across the split (the leakage check), with a few pairs side by side."""
    st.markdown("##### Near-duplicates across the split")
    st.caption(f"Two photos are near-duplicates when their {REFERENCE_BACKBONE} features have a cosine similarity of "
               f"at least {DUPLICATE_THRESHOLD:.2f}: shots of one leaf, or look-alike leaves framed the same way. A "
               "held-out photo whose near-twin was trained on flatters the score; every run reports how many there "
               "were.")
    cache, extractor = feature_cache(), extractor_for(REFERENCE_BACKBONE)
    if not cache.views_in(cache.key(ds.fingerprint(), extractor.cache_identity)) and \
            photos_not_cached(ds, extractor, cache) <= NEW_PHOTOS_READ_HERE:  # an edit: reuse, read the new ones
        with st.spinner("Reading the new photos of this version…"):
            get_features(ds, extractor, cache)
    if not cache.views_in(cache.key(ds.fingerprint(), extractor.cache_identity)):
        st.write(f"The check needs the photos read once with {REFERENCE_BACKBONE} (kept in the cache; top-tuning "
                 "with it does the same).")
        if st.button("Check for near-duplicates", icon=":material/content_copy:", disabled=job_is_running("duplicates")):
            def target(progress, should_cancel) -> None:
                get_features(ds, extractor, cache, progress=progress, should_cancel=should_cancel)

            start_job("duplicates", "Reading the photos for the near-duplicate check", target, {})
        job = job_for("duplicates")
        if job is not None:
            follow_job(job, lambda view: None if view.state == "completed" else draw_failure(view))
        return
    report = leakage_of(str(ds.root), ds.fingerprint(), seed, test_size, kind, str(home()))
    c1, c2, c3 = st.columns(3)
    c1.metric("Near-duplicate pairs", f"{report['pairs']:,}", help="Among all the photos of the dataset.")
    c2.metric("Pairs across the split", f"{report['pairs_across']:,}", help="One photo trains, the other is held out.")
    c3.metric("Held-out photos with a near-twin", f"{report['test_photos_with_twin']} of {report['n_test']}")
    if report["pairs_across"] and kind == "random":
        st.info("Choose the grouped split above to keep near-duplicates on one side; comparing a run on each "
                "split shows how much they flatter the score.", icon=":material/info:")
    path_of = dict(zip(ds.relpaths, ds.paths))  # a version's added photos lie in the workspace
    names = dataset_versions(str(ds.version["source"]) if isinstance(ds, VersionedDataset) else str(ds.root)).names
    for pair in report["examples"][:PAIRS_SHOWN]:
        cols = st.columns(2)
        for col, side in zip(cols, ("test", "train")):
            thumb = thumbnail(path_of.get(pair[side], ds.root / pair[side]))
            if thumb is not None:
                col.image(thumb, caption=f"{'held out' if side == 'test' else 'trains'}: "
                                         f"{shown_name(pair[side], names)}", width=200)
        st.caption(f"cosine similarity {pair['similarity']:.3f}")


with friendly_errors():
    choose_source()
st.divider()
with friendly_errors():
    show_dataset()
