"""Predictions: where one run is right and wrong on the held-out photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import PAGES, completed_runs, friendly_errors, percent, pick_run, remembered_run, through_router
from toptune_core.errors import ImageError
from toptune_core.data.images import load_rgb

through_router()
st.title("5 · Predictions")

GALLERY_SIZE = 24
COLUMNS = 6
ALL = "(any)"


@st.cache_data(show_spinner=False, max_entries=3000)
def thumbnail(path: str) -> bytes | None:
    try:
        im = load_rgb(path, min_size=160)
    except ImageError:
        return None
    im.thumbnail((200, 200))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> go.Figure:
    """The confusion matrix as a heatmap, with one clickable marker per cell (heatmaps themselves cannot be
    selected in Plotly); choosing a cell shows its photos below."""
    n = len(classes)
    true_idx, pred_idx = np.meshgrid(range(n), range(n), indexing="ij")
    true_names = [classes[i] for i in true_idx.ravel()]
    pred_names = [classes[j] for j in pred_idx.ravel()]
    counts = matrix.ravel()
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Greens", showscale=False,
                             text=matrix, texttemplate="%{text}", textfont=dict(size=16), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=pred_names, y=true_names, mode="markers", customdata=np.stack([true_names, pred_names], axis=1),
        marker=dict(symbol="square", size=max(14, 240 // max(n, 1)), opacity=0, color="black"),
        hovertemplate="true: %{customdata[0]}<br>predicted: %{customdata[1]}<br>%{text} photo(s)<extra></extra>",
        text=counts, showlegend=False))
    fig.update_layout(xaxis=dict(title="predicted class", side="bottom"),
                      yaxis=dict(title="true class", autorange="reversed"),
                      height=max(360, 70 * n + 160), margin=dict(t=20, b=10), clickmode="event+select",
                      dragmode=False)
    return fig


def on_cell_selected() -> None:
    points = st.session_state.get("confusion", {}).get("selection", {}).get("points", [])
    if points and points[0].get("customdata"):
        true, pred = points[0]["customdata"][:2]
        st.session_state["pred_true"], st.session_state["pred_pred"] = true, pred


def page() -> None:
    runs = completed_runs()
    if not runs:
        st.info("No finished runs yet. Top-tune a model first.")
        st.page_link(PAGES["toptune"], label="Go to Top-tune →", icon=":material/bolt:")
        return
    run = pick_run("Run", runs, remembered_run("last_run"), key="pred_run")
    m = run.metrics
    classes = list(m.get("classes") or run.params.get("classes") or [])
    st.caption(f"Tested on {m.get('n_test')} held-out photos never used for training · accuracy "
               f"{percent(m.get('accuracy'))} · balanced accuracy {percent(m.get('balanced_accuracy'))} · "
               f"macro F1 {percent(m.get('macro_f1'))}")
    preds = run.predictions()

    st.markdown("##### Confusion matrix")
    st.caption("Rows: the true class. Columns: what the model said. The diagonal is right; everything else is a "
               "mistake. Click a cell to see its photos below.")
    matrix = np.asarray(m["confusion_matrix"])
    st.plotly_chart(confusion_figure(matrix, classes), key="confusion", on_select=on_cell_selected,
                    selection_mode="points")
    st.markdown("##### Per class")
    per_class = pd.DataFrame([{"class": c, "photos tested": v["support"], "precision": v["precision"],
                               "recall": v["recall"], "F1": v["f1"]} for c, v in m["per_class"].items()])
    st.dataframe(per_class, hide_index=True, column_config={
        k: st.column_config.NumberColumn(format="%.2f") for k in ("precision", "recall", "F1")})
    st.caption("Precision: when the model says this class, how often it is right. "
               "Recall: how many of the photos of this class it finds.")

    st.markdown("##### Held-out photos")
    c1, c2, c3 = st.columns(3)
    options = [ALL, *classes]
    for key in ("pred_true", "pred_pred"):
        if st.session_state.get(key) not in options:
            st.session_state[key] = ALL
    true = c1.selectbox("True class", options, key="pred_true")
    pred = c2.selectbox("Predicted class", options, key="pred_pred")
    mistakes = c3.toggle("Only mistakes", key="pred_mistakes")
    shown = preds
    if true != ALL:
        shown = shown[shown["true"] == true]
    if pred != ALL:
        shown = shown[shown["predicted"] == pred]
    if mistakes:
        shown = shown[~shown["correct"].astype(bool)]
    shown = shown.sort_values("confidence", kind="stable")
    st.caption(f"{len(shown)} photo(s), least confident first" + (f"; showing the first {GALLERY_SIZE}"
                                                                   if len(shown) > GALLERY_SIZE else "") + ".")
    rows = list(shown.head(GALLERY_SIZE).itertuples(index=False))
    for start in range(0, len(rows), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, row in zip(cols, rows[start:start + COLUMNS]):
            thumb = thumbnail(row.path) if Path(row.path).exists() else None
            verdict = "Right" if bool(row.correct) else "Wrong"
            caption = f"{verdict} · true: {row.true} · predicted: {row.predicted} ({row.confidence:.0%})"
            if thumb is None:
                col.caption(f"{Path(row.path).name} (photo no longer available) · {caption}")
            else:
                col.image(thumb, caption=caption, width="stretch")


with friendly_errors():
    page()
