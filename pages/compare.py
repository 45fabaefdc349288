"""Compare: held-out accuracy against training time for every recorded run, top-tuned and fine-tuned."""

from __future__ import annotations

import math

import plotly.express as px
import streamlit as st

from pages._ui import PAGES, completed_runs, friendly_errors, through_router
from toptune_core.workspace import runs_frame

through_router()
st.title("4 · Compare")


def page() -> None:
    runs = completed_runs()
    if not runs:
        st.info("No finished runs yet. Top-tune a model first; every run you make appears here.")
        st.page_link(PAGES["toptune"], label="Go to Top-tune →", icon=":material/bolt:")
        return
    include = st.toggle("Count feature extraction in top-tuning time", value=True, key="cmp_include_extraction",
                        help="On: top-tuning time = extracting the features (done once, then cached) + training "
                             "the classifier. Off: only training the classifier, as when the features are cached.")
    frame = runs_frame(runs, include_extraction=include)
    plotted = frame.dropna(subset=["accuracy", "training time (s)"])
    plotted = plotted[plotted["training time (s)"] > 0]
    fig = px.scatter(
        plotted, x="training time (s)", y="accuracy", color="method", symbol="backbone", log_x=True,
        hover_name="run",
        hover_data={"classifier": True, "balanced accuracy": ":.3f", "macro F1": ":.3f", "training time (s)": ":.1f",
                    "training photos": True, "test photos": True, "dataset": True, "settings": True,
                    "started": True, "method": False, "backbone": True, "accuracy": ":.3f"},
        color_discrete_map={"top-tuned": "#2E7D32", "fine-tuned": "#E65100"},
        labels={"training time (s)": "training time (seconds, log scale)", "accuracy": "held-out accuracy"},
    )
    fig.update_traces(marker=dict(size=13, line=dict(width=1, color="white")))
    times = plotted["training time (s)"]
    if len(times):  # half a decade either side, ticks at 1-2-5 steps in plain seconds
        low, high = math.log10(times.min()) - 0.5, math.log10(times.max()) + 0.5
        ticks = [m * 10.0 ** e for e in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 5)
                 if low <= math.log10(m * 10.0 ** e) <= high]
        fig.update_xaxes(range=[low, high], tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])
    fig.update_layout(height=460, margin=dict(t=30, b=10), yaxis=dict(range=[0, 1.02], tickformat=".0%"))
    st.plotly_chart(fig, key="compare_scatter")
    st.caption(f"{len(plotted)} run(s). Up and to the left is better: more accurate, less training time. "
               + ("Top-tuning times include the feature extraction." if include
                  else "Top-tuning times are the classifier training only."))
    st.dataframe(frame, hide_index=True, column_config={
        "accuracy": st.column_config.NumberColumn(format="%.3f"),
        "balanced accuracy": st.column_config.NumberColumn(format="%.3f"),
        "macro F1": st.column_config.NumberColumn(format="%.3f"),
        "training time (s)": st.column_config.NumberColumn(format="%.2f"),
        "feature extraction (s)": st.column_config.NumberColumn(format="%.1f"),
    })
    st.download_button("Download the table (CSV)", frame.to_csv(index=False).encode(), file_name="toptune-runs.csv",
                       mime="text/csv", icon=":material/download:")


with friendly_errors():
    page()
