"""Predictions: where one run is right and wrong on the held-out photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pages._charts import confusion_figure
from pages._field import show_photo_map
from pages._router import through_router
from pages._state import remembered_run
from pages._versions import fix_photos
from pages._widgets import friendly_errors, need_runs, percent, pick_run, run_in_url, thumbnail

through_router()
st.title("5 · Predictions")

GALLERY_SIZE = 24
COLUMNS = 6
ALL = "(any)"


def on_cell_selected() -> None:
    points = st.session_state.get("confusion", {}).get("selection", {}).get("points", [])
    if points and points[0].get("customdata"):
        true, pred = points[0]["customdata"][:2]
        st.session_state["pred_true"], st.session_state["pred_pred"] = true, pred


def page() -> None:
    asked = run_in_url()
    runs = need_runs("No finished runs yet. Top-tune a model first.")
    if not runs:
        return
    run = pick_run("Run", runs, asked or remembered_run("last_run"), key="pred_run")
    m = run.metrics
    classes = list(m.get("classes") or run.params.get("classes") or [])
    st.caption(f"Tested on {m.get('n_test')} held-out photos never used for training · accuracy "
               f"{percent(m.get('accuracy'))} · balanced accuracy {percent(m.get('balanced_accuracy'))} · "
               f"macro F1 {percent(m.get('macro_f1'))}")
    preds = run.predictions()
    fam = m.get("familiarity")
    if fam:
        st.caption(f"Unknown-photo check (normal strictness): {percent(fam['coverage'])} of these held-out photos are "
                   f"recognised, {percent(fam['accuracy_recognised'])} of those right "
                   f"({percent(fam['accuracy_all'])} of all photos right without the check).")

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
    c1, c2, c3, c4 = st.columns(4)
    options = [ALL, *classes]
    for key in ("pred_true", "pred_pred"):
        if st.session_state.get(key) not in options:
            st.session_state[key] = ALL
    true = c1.selectbox("True class", options, key="pred_true")
    pred = c2.selectbox("Predicted class", options, key="pred_pred")
    mistakes = c3.toggle("Only mistakes", key="pred_mistakes")
    checked = "recognised" in preds.columns
    refused = c4.toggle("Only photos not recognised", key="pred_refused", disabled=not checked,
                        help="Photos the unknown-photo check refused: in use they would get \"not recognised\" "
                             "instead of a class." if checked else "This run predates the unknown-photo check.")
    shown = preds
    if true != ALL:
        shown = shown[shown["true"] == true]
    if pred != ALL:
        shown = shown[shown["predicted"] == pred]
    if mistakes:
        shown = shown[~shown["correct"].astype(bool)]
    if refused and checked:
        shown = shown[~shown["recognised"].astype(bool)]
    shown = shown.sort_values("confidence", kind="stable")
    st.caption(f"{len(shown)} photo(s), least confident first" + (f"; showing the first {GALLERY_SIZE}"
                                                                   if len(shown) > GALLERY_SIZE else "") + ".")
    rows = list(shown.head(GALLERY_SIZE).itertuples(index=False))
    for start in range(0, len(rows), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, row in zip(cols, rows[start:start + COLUMNS]):
            thumb = thumbnail(row.path)
            verdict = "Right" if bool(row.correct) else "Wrong"
            caption = f"{verdict} · true: {row.true} · predicted: {row.predicted} ({row.confidence:.0%})"
            if checked and not bool(row.recognised):
                caption += " · not recognised"
            if thumb is None:
                col.caption(f"{Path(row.path).name} (photo no longer available) · {caption}")
            else:
                col.image(thumb, caption=caption, width="stretch")
    with friendly_errors():
        show_photo_map(run, rows)
    teachable = [r for r in rows if not bool(r.correct) or (checked and not bool(r.recognised))]
    with friendly_errors():
        fix_photos(teachable, run, "pred_teach", picker="pred_run")


with friendly_errors():
    page()
