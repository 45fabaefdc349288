"""Compare: held-out accuracy against training time for every recorded run, top-tuned and fine-tuned."""

from __future__ import annotations

import streamlit as st

from pages._charts import compare_scatter
from pages._router import through_router
from pages._widgets import friendly_errors, need_runs
from toptune_core.reports import runs_frame

through_router()
st.title("4 · Compare")


def page() -> None:
    runs = need_runs("No finished runs yet. Top-tune a model first; every run you make appears here.")
    if not runs:
        return
    include = st.toggle("Count feature extraction in top-tuning time", value=True, key="cmp_include_extraction",
                        help="On: top-tuning time = extracting the features (done once, then cached) + training "
                             "the classifier. Off: only training the classifier, as when the features are cached.")
    frame = runs_frame(runs, include_extraction=include)
    plotted = frame.dropna(subset=["accuracy", "training time (s)"])
    plotted = plotted[plotted["training time (s)"] > 0]
    fig = compare_scatter(plotted)
    st.plotly_chart(fig, key="compare_scatter")
    st.caption(f"{len(plotted)} run(s). Up and to the left is better: more accurate, less training time. "
               + ("Top-tuning times include the feature extraction." if include
                  else "Top-tuning times are the classifier training only."))
    st.dataframe(frame, hide_index=True, column_config={
        "accuracy": st.column_config.NumberColumn(format="%.3f"),
        "balanced accuracy": st.column_config.NumberColumn(format="%.3f"),
        "macro F1": st.column_config.NumberColumn(format="%.3f"),
        "coverage": st.column_config.NumberColumn(format="%.3f", help="Share of held-out photos the unknown-photo "
                                                                     "check recognises (normal strictness)."),
        "accuracy on recognised": st.column_config.NumberColumn(format="%.3f"),
        "training time (s)": st.column_config.NumberColumn(format="%.2f"),
        "feature extraction (s)": st.column_config.NumberColumn(format="%.1f"),
    })
    st.download_button("Download the table (CSV)", frame.to_csv(index=False).encode(), file_name="toptune-runs.csv",
                       mime="text/csv", icon=":material/download:")


with friendly_errors():
    page()
