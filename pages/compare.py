"""Compare: held-out accuracy against training time for every recorded run, top-tuned and fine-tuned; deleting
one's own runs (on a shared server, to make room under the workspace's limits)."""

from __future__ import annotations

import streamlit as st

from pages._charts import compare_scatter, versions_chart
from pages._router import through_router
from pages._state import completed_runs, store
from pages._widgets import friendly_errors, need_runs, run_label
from toptune_core.data.version_history import versions_frame
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
    st.caption(f"{len(plotted)} run(s). Up and to the left is better: more accurate, less training time. Ringed and "
               "joined: the best trade-offs (the Pareto front), runs that no other run beats on both accuracy and "
               "training time. "
               + ("Top-tuning times include the feature extraction." if include
                  else "Top-tuning times are the classifier training only.")
               + " Each run answers a held-out photo from the views in its 'views' column (top-tuned: the average "
                 "over its view set; fine-tuned: its test-time views, chosen on the Fine-tune page), so runs with "
                 "other views or input resolutions are separate points. The held-out split of each run is named "
                 "in its hover text and in the table.")
    st.dataframe(frame, hide_index=True, column_config={
        "accuracy": st.column_config.NumberColumn(format="%.3f"),
        "balanced accuracy": st.column_config.NumberColumn(format="%.3f"),
        "macro F1": st.column_config.NumberColumn(format="%.3f"),
        "coverage": st.column_config.NumberColumn(format="%.3f", help="Share of held-out photos the unknown-photo "
                                                                     "check recognises (normal strictness)."),
        "accuracy on recognised": st.column_config.NumberColumn(format="%.3f"),
        "training time (s)": st.column_config.NumberColumn(format="%.2f"),
        "best trade-off": st.column_config.CheckboxColumn(help="On the Pareto front: no other run is at least as "
                                                               "accurate and at most as long, and better in one."),
        "feature extraction (s)": st.column_config.NumberColumn(format="%.1f"),
    })
    st.download_button("Download the table (CSV)", frame.to_csv(index=False).encode(), file_name="toptune-runs.csv",
                       mime="text/csv", icon=":material/download:")


def versions_section() -> None:
    """The accuracies of the dataset versions side by side (once runs were trained on two versions of a folder)."""
    runs = completed_runs()
    frame = versions_frame(runs)
    if frame.empty or frame.groupby("source")["version"].nunique().max() < 2:
        return
    st.markdown("##### Dataset versions")
    st.caption("Each version is the folder with your changes (photos added, labels fixed, photos left out) as "
               "they were when a run trained on it; v1 is the first one trained on (the same names as on the Data "
               "and Classify pages). Bars: the newest run of each setting on each version. A photo's side of the "
               "split is fixed by its content, so versions are scored on the same held-out photos, less those you "
               "left out (photos you add train): \"held-out photos\" says so for each run, next to the first run "
               "with the same split settings.")
    st.plotly_chart(versions_chart(frame), key="versions_chart")
    st.dataframe(frame, hide_index=True, key="versions_table",
                 column_config={"accuracy": st.column_config.NumberColumn(format="%.3f"),
                                "version id": st.column_config.TextColumn(help="The version's fingerprint (a hash of "
                                                                               "its photos and labels).")})


def delete_runs() -> None:
    """Delete some of this visitor's own finished runs (showcase runs are not theirs to delete)."""
    runs = store()
    own = {r.id: r for r in runs.list() if r.status != "running"}
    if not own:
        return
    with st.expander(f"Delete runs ({len(own)} in your workspace)"):
        labels = {i: f"{run_label(r)} · {r.status}" for i, r in own.items()}
        chosen = st.multiselect("Runs to delete", list(own), format_func=labels.__getitem__, key="cmp_delete")
        if st.button("Delete these runs", disabled=not chosen, icon=":material/delete:"):
            for run_id in chosen:
                runs.delete(run_id)
            st.rerun()


with friendly_errors():
    page()
with friendly_errors():
    versions_section()
with friendly_errors():
    delete_runs()
