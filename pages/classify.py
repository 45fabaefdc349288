"""Classify: leaf photos of one plant (uploaded or from the camera) through a trained model, with the evidence.

A photo unlike the model's training photos gets "Not recognised" instead of a
class (``toptune_core.trust.familiarity``); a recognised one shows the class,
the confidence, every class's probability and the most similar training
photos. Up to six photos of one plant give one combined diagnosis.
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from pages._charts import probabilities_chart
from pages._download import model_download_button
from pages._field import show_offline_page, show_where
from pages._router import through_router
from pages._state import predictor_for, settings
from pages._versions import evidence_caption, teach_photos
from pages._widgets import friendly_errors, need_runs, percent, pick_run, run_in_url, seconds, thumbnail
from toptune_core.data.uploads import photo_source, read_uploaded_photo
from toptune_core.errors import ImageError
from toptune_core.predict import MAX_PHOTOS_PER_PLANT
from toptune_core.trust.familiarity import DEFAULT_STRICTNESS, STRICTNESS

through_router()
st.title("6 · Classify a photo")

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif"]
NOT_RECOGNISED = "Not recognised"
WHY = ("This photo does not look like the photos this model was trained on. It may show another crop or another "
       "disease, something that is not a leaf, or be too dark, blurred or taken from too far away.")
WHAT_TO_DO = ("**What to do:** take a new photo of one leaf filling the frame, in even daylight, and try again. If it "
              "is another crop or problem, this model cannot diagnose it: ask an agronomist, or train a model on "
              "photos of that crop.")


def strictness_choice(run) -> str:
    """The strictness radio, each option with its measured effect on this run's held-out photos."""
    report = (run.metrics or {}).get("familiarity")
    if not report:
        st.caption("This model was trained before the unknown-photo check existed, so it names a class for every "
                   "photo. Train it again to get \"not recognised\" answers.")
        return DEFAULT_STRICTNESS
    effect = report["by_strictness"]

    def label(name: str) -> str:
        e = effect[name]
        return (f"{name} · accepts {percent(e['coverage'])} of held-out photos, "
                f"{percent(e['accuracy_recognised'])} right on those")

    choice = st.radio("How strict the unknown-photo check is", list(STRICTNESS), key="cls_strictness",
                      index=list(STRICTNESS).index(DEFAULT_STRICTNESS), format_func=label,
                      help="Stricter refuses more photos that look unusual: fewer answers, more of them right. "
                           "Measured on this model's held-out photos, never used to set the check.")
    st.caption(f"Without the check: {percent(report['accuracy_all'])} right on all held-out photos.")
    return choice


def gather_photos() -> list[tuple[str, bytes]]:
    upload_tab, camera_tab = st.tabs(["Upload photos", "Take a photo"])
    with upload_tab:
        uploads = st.file_uploader(f"Leaf photos of one plant (1 to {MAX_PHOTOS_PER_PLANT})", type=PHOTO_TYPES,
                                   accept_multiple_files=True, key="cls_upload") or []
    with camera_tab:
        shot = st.camera_input("Point the camera at one leaf", key="cls_camera")
    photos = [(f.name, f.getvalue()) for f in uploads] + ([(shot.name, shot.getvalue())] if shot else [])
    if len(photos) > MAX_PHOTOS_PER_PLANT:
        st.warning(f"{len(photos)} photos given; one diagnosis combines at most {MAX_PHOTOS_PER_PLANT}, so only the "
                   f"first {MAX_PHOTOS_PER_PLANT} are used.")
    return photos[:MAX_PHOTOS_PER_PLANT]


def show_nearest(prediction) -> None:
    if prediction.familiarity is None or not prediction.familiarity.nearest:
        return
    if prediction.recognised:
        st.markdown("**Most similar training photos** (the evidence behind the answer)")
    else:
        st.markdown("**Closest training photos**, still far from this photo: the model knows only photos like these")
    cols = st.columns(len(prediction.familiarity.nearest))
    for col, (path, cls, dist) in zip(cols, prediction.familiarity.nearest):
        thumb = thumbnail(path)
        caption = evidence_caption(path, cls, dist)
        if thumb:
            col.image(thumb, caption=caption, width="stretch")
        else:
            col.caption(caption)


def show_single(name: str, data: bytes, predictor, strictness: str, run) -> Optional[str]:
    """The photo's answer and evidence; returns the class given (None: not recognised)."""
    max_mb = settings().limits.photo_mb
    image = read_uploaded_photo(data, name, max_mb)
    prediction = predictor.predict(photo_source(data, name, max_mb), strictness=strictness, heatmaps=True)
    left, right = st.columns([2, 3])
    left.image(image, caption=name, width="stretch")
    with right:
        if not prediction.recognised:
            st.markdown(f"### {NOT_RECOGNISED}")
            st.warning(WHY)
            st.markdown(WHAT_TO_DO)
        else:
            st.markdown(f"### {prediction.label}")
            c1, c2 = st.columns(2)
            c1.metric("Confidence", percent(prediction.confidence))
            if prediction.familiarity is not None:
                c2.metric("Familiarity", percent(prediction.familiarity.familiarity),
                          help="Share of the training photos that are at most as typical as this one.")
                st.caption("Confidence: how sure the model is of this class rather than the others. Familiarity: "
                           "how much the photo looks like the training photos (low: unusual for this model, "
                           "whatever the class).")
            if prediction.confidence < 0.5:
                st.warning("The model is unsure about this photo; take another one, closer and in even light.")
            st.plotly_chart(probabilities_chart(prediction.classes, prediction.probabilities), key="probabilities")
        st.caption(f"Classified in {seconds(prediction.seconds)} by run {run.id} ({run.backbone}).")
    show_where(predictor, photo_source(data, name, max_mb), prediction, [prediction.label])
    show_nearest(prediction)
    return prediction.label if prediction.recognised else None


def diagnose(photos: list[tuple[str, bytes]], predictor, strictness: str):
    """The combined diagnosis of the readable photos, and each photo's outcome: a Prediction or an error line."""
    outcome: dict[int, object] = {}
    readable: list[int] = []
    sources = []
    for i, (name, data) in enumerate(photos):
        try:
            sources.append(photo_source(data, name, settings().limits.photo_mb))
            readable.append(i)
        except ImageError as e:
            outcome[i] = str(e)
    diagnosis = predictor.diagnose(sources, strictness=strictness) if sources else None
    if diagnosis is not None:
        errors = dict(diagnosis.errors)
        for k, i in enumerate(readable):
            outcome[i] = diagnosis.predictions[k] or errors.get(k, "This photo could not be read.")
    return diagnosis, outcome


def show_combined(photos: list[tuple[str, bytes]], predictor, strictness: str) -> Optional[str]:
    """The combined diagnosis and each photo's answer; returns the combined class (None: not recognised)."""
    diagnosis, outcome = diagnose(photos, predictor, strictness)
    if diagnosis is None or not diagnosis.recognised:
        st.markdown(f"### {NOT_RECOGNISED}")
        st.warning("None of these photos looks like the photos this model was trained on. " + WHY.split(". ", 1)[1])
        st.markdown(WHAT_TO_DO)
    else:
        st.markdown(f"### Combined diagnosis: {diagnosis.label}")
        st.metric("Confidence", percent(float(diagnosis.probabilities.max())))
        st.caption(f"The average of the {diagnosis.n_recognised} recognised photo(s) of {len(photos)}; photos not "
                   "recognised do not count.")
        st.plotly_chart(probabilities_chart(diagnosis.classes, diagnosis.probabilities), key="probabilities")
    st.markdown("##### Each photo")
    for col, (i, (name, data)) in zip(st.columns(len(photos)), enumerate(photos)):
        result = outcome[i]
        if isinstance(result, str):
            col.error(result)
            continue
        col.image(data, caption=name, width="stretch")
        if result.recognised:
            col.success(f"{result.label} · {percent(result.confidence)}")
        else:
            col.warning(NOT_RECOGNISED)
    return diagnosis.label if diagnosis is not None and diagnosis.recognised else None


def page() -> None:
    asked = run_in_url()
    runs = need_runs("No trained model yet. Top-tune one first: the Top-tune page estimates how long the first "
                     "run takes on this computer (later runs reuse the photos' features and take seconds).")
    if not runs:
        return
    best = max(runs, key=lambda r: (r.accuracy, r.created))
    run = pick_run("Model (the best one is chosen first)", runs, asked or best.id, key="cls_run")
    classes = run.metrics.get("classes") or run.params.get("classes") or []
    st.caption(f"It tells apart: {', '.join(classes)}. Held-out accuracy {percent(run.accuracy)}. Photos of other "
               "crops, other problems or no leaf at all should get \"not recognised\"; an unseen disease of the "
               "same crop is often NOT caught (see the Home page).")
    model_download_button(run)
    show_offline_page(run)
    strictness = strictness_choice(run)
    photos = gather_photos()
    if not photos:
        st.caption(f"Upload 1 to {MAX_PHOTOS_PER_PLANT} photos of leaves of one plant, or take one with the camera.")
        return
    answer = None
    with friendly_errors():
        with st.spinner("Loading the model (only the first time)…"):
            predictor = predictor_for(run.id)
        if len(photos) == 1:
            answer = show_single(*photos[0], predictor, strictness, run)
        else:
            answer = show_combined(photos, predictor, strictness)
    st.divider()
    with friendly_errors():
        teach_photos(photos, run, "cls_teach", picker="cls_run", answer=answer)


with friendly_errors():
    page()
