"""In the field: where on the leaf the model sees each class (the class map), and the run's offline page.

Used by the Classify page (a photo's map beside it; the offline page's link and QR code) and the Predictions
page (the map of one held-out photo, for its predicted and its true class). The maps are
``toptune_core.explain``'s, on one fixed colour scale; never for a photo the model does not recognise.
"""

from __future__ import annotations

import io
from pathlib import Path

import streamlit as st

from pages._state import predictor_for, settings, store
from toptune_core.explain import COLOUR_SCALE, overlay
from toptune_core.portable import offline
from toptune_core.portable.top import CLASSIFIER_FILE

MAP_HELP = (f"Red: where the photo adds evidence for this class rather than for the others; blue: against it. One "
            f"fixed scale for every photo (±{COLOUR_SCALE:g} per cell of the 9 x 9 grid over the centre crop the "
            "model sees), so a plain leaf stays pale. Where the model looked, not proof.")


def class_map_images(predictor, source, prediction, classes: list[str]) -> list[tuple[bytes, str]]:
    """(PNG of the crop with the class's map, caption) for each of ``classes`` that has a map."""
    from PIL import Image

    crop = predictor.estimator.extractor.load_pixels(source)
    out = []
    for cls in classes:
        if cls in (prediction.heatmaps or {}):
            import numpy as np

            buf = io.BytesIO()
            Image.fromarray(overlay(crop, np.asarray(prediction.heatmaps[cls]))).save(buf, format="PNG")
            out.append((buf.getvalue(), f"Where it sees {cls}"))
    return out


def show_where(predictor, source, prediction, classes: list[str]) -> None:
    """The crop the model saw and the maps of ``classes`` beside it, or one line why there is none."""
    if prediction.heatmaps is None:
        if prediction.heatmap_note:
            st.caption(f"No map of where on the leaf: {prediction.heatmap_note}.")
        return
    images = class_map_images(predictor, source, prediction, classes)
    st.markdown("**Where on the leaf**", help=MAP_HELP)
    cols = st.columns(1 + len(images))
    cols[0].image(predictor.estimator.extractor.load_pixels(source), caption="What the model saw (centre crop)",
                  width="stretch")
    for col, (png, caption) in zip(cols[1:], images):
        col.image(png, caption=caption, width="stretch")


def show_offline_page(run) -> None:
    """The run's offline page: made on request, then its link and a QR code for a phone."""
    if run.method != "toptune":
        return
    if not st.toggle("Offline page for the field (works with no network)", key=f"field_page_{run.id}"):
        return
    with st.container(border=True):
        st.caption("One web page with this model inside: a phone opens it once, adds it to the home screen, then "
                   "diagnoses photos with no network (same answers as here). Installing it for offline use needs "
                   "HTTPS or localhost: see the README, \"In the field\".")
        if not (store().run_dir(run.id) / CLASSIFIER_FILE).exists():
            st.caption("This run was trained before models were saved as ONNX: train it again to get its page.")
            return
        name = offline.page_name(run.id, store())
        if not (offline.published_folder(name) / "files.json").is_file():
            if not offline.ort_available():
                st.info(f"The offline page needs onnxruntime-web: run `npm ci` in {offline.WEB} (make install does).")
                return
            if not st.button("Make the offline page", key=f"field_publish_{run.id}"):
                return
            with st.spinner("Writing the offline page…"):
                offline.publish(run.id, store=store(), settings=settings())
        address = _base_url() + offline.published_path(name)
        st.markdown(f"[Open the offline page]({address}) · `{address}`")
        st.image(_qr_png(address), caption="Scan with the phone's camera", width=220)


def _base_url() -> str:
    url = str(getattr(st.context, "url", "") or "")
    if "://" not in url:
        return ""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _qr_png(text: str) -> bytes:
    import segno

    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="png", scale=6, border=2)
    return buf.getvalue()


def show_photo_map(run, rows) -> None:
    """Predictions page: pick one of the shown held-out photos; its maps for the predicted and the true class."""
    if run.method != "toptune" or not rows:
        return
    with st.expander("Where on the leaf: one photo's map (most useful on the mistakes)"):
        names = {f"{Path(str(r.path)).name} · true {r.true} · predicted {r.predicted}": r for r in rows}
        choice = st.selectbox("Photo to map", list(names), index=None, key=f"pred_map_{run.id}",
                              placeholder="Choose a photo shown above")
        if choice is None:
            return
        row = names[choice]
        predictor = predictor_for(run.id)
        prediction = predictor.predict(row.path, heatmaps=True)
        show_where(predictor, row.path, prediction, list(dict.fromkeys([row.predicted, row.true])))
