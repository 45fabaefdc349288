"""Classify a photo: one leaf photo (uploaded or taken with the camera) through a trained model."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages._ui import (PAGES, completed_runs, friendly_errors, percent, pick_run, predictor_for, seconds, store,
                       through_router)
from toptune_core.data.uploads import photo_source, read_uploaded_photo

through_router()
st.title("6 · Classify a photo")

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif"]


def page() -> None:
    runs = completed_runs()
    if not runs:
        st.info("No trained model yet. Top-tune one first (the demo dataset takes about a minute).")
        st.page_link(PAGES["toptune"], label="Go to Top-tune →", icon=":material/bolt:")
        return
    best = store().best()
    run = pick_run("Model (the best one is chosen first)", runs, best.id if best else None, key="cls_run")
    classes = run.metrics.get("classes") or run.params.get("classes") or []
    st.caption(f"It tells apart: {', '.join(classes)}. Held-out accuracy {percent(run.accuracy)}.")

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
            order = sorted(zip(prediction.classes, prediction.probabilities), key=lambda cp: cp[1])
            fig = px.bar(x=[p for _, p in order], y=[c for c, _ in order], orientation="h",
                         labels={"x": "probability", "y": "class"}, text=[f"{p:.0%}" for _, p in order])
            fig.update_traces(marker_color="#2E7D32")
            fig.update_layout(height=max(200, 45 * len(order) + 80), margin=dict(t=10, b=10),
                              xaxis=dict(range=[0, 1], tickformat=".0%"))
            st.plotly_chart(fig, key="probabilities")
            st.caption(f"Classified in {seconds(prediction.seconds)} by run {run.id} ({run.backbone}).")


with friendly_errors():
    page()
