"""Classify a photo: one leaf photo (uploaded or taken with the camera) through a trained model."""

from __future__ import annotations

import streamlit as st

from pages._charts import probabilities_chart
from pages._download import model_download_button
from pages._router import through_router
from pages._state import predictor_for, store
from pages._widgets import friendly_errors, need_runs, percent, pick_run, seconds
from toptune_core.data.uploads import photo_source, read_uploaded_photo

through_router()
st.title("6 · Classify a photo")

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif"]


def page() -> None:
    runs = need_runs("No trained model yet. Top-tune one first (the demo dataset takes about a minute).")
    if not runs:
        return
    best = store().best()
    run = pick_run("Model (the best one is chosen first)", runs, best.id if best else None, key="cls_run")
    classes = run.metrics.get("classes") or run.params.get("classes") or []
    st.caption(f"It tells apart: {', '.join(classes)}. Held-out accuracy {percent(run.accuracy)}.")
    model_download_button(run)

    upload_tab, camera_tab = st.tabs(["Upload a photo", "Take a photo"])
    with upload_tab:
        upload = st.file_uploader("Leaf photo", type=PHOTO_TYPES, key="cls_upload")
    with camera_tab:
        shot = st.camera_input("Point the camera at one leaf", key="cls_camera")
    photo = shot or upload
    if photo is None:
        st.caption("Upload a photo of one leaf, or take one with the camera.")
        return

    data, name = photo.getvalue(), photo.name
    with friendly_errors():
        image = read_uploaded_photo(data, name)
        with st.spinner("Loading the model (only the first time)…"):
            predictor = predictor_for(run.id)
        prediction = predictor.predict(photo_source(data, name))
        left, right = st.columns([2, 3])
        left.image(image, caption=name, width="stretch")
        with right:
            st.markdown(f"### {prediction.label}")
            st.metric("Confidence", percent(prediction.confidence))
            if prediction.confidence < 0.5:
                st.warning("The model is unsure about this photo; take another one, closer and in even light.")
            st.plotly_chart(probabilities_chart(prediction.classes, prediction.probabilities), key="probabilities")
            st.caption(f"Classified in {seconds(prediction.seconds)} by run {run.id} ({run.backbone}).")


with friendly_errors():
    page()
