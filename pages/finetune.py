"""Fine-tune: the slow comparison. Trains the whole backbone in a separate process; this page follows it.

The training runs in its own process (``toptune_core.jobs.process.FinetuneJob``),
which records its progress and curve in the run store, so leaving the page,
reloading the browser or opening another tab finds it again by its run id.
"""

from __future__ import annotations

from dataclasses import fields

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._ui import (PAGES, current_dataset, draw_progress, friendly_errors, percent, remember, remembered_run,
                       scan_dataset, seconds, split_settings, store, through_router)
from toptune_core.backbones.catalogue import CATALOGUE, DEFAULT_BACKBONE
from toptune_core.workspace import training_seconds
from toptune_core.errors import RunNotFound
from toptune_core.progress import Progress

through_router()
st.title("3 · Fine-tune (the comparison)")
st.write("Fine-tuning trains every layer of the backbone on your photos. It is the usual way to adapt a "
         "pretrained network, and much slower than top-tuning: run it to see what the extra time buys. "
         "It is tested on the same held-out photos as top-tuning.")

from toptune_core.jobs.process import FinetuneJob

try:
    import toptune_core.finetune as finetune
except ImportError:  # the engine is a separate part; without it the page says so instead of failing
    finetune = None

STATE_WORDS = {"running": "running", "completed": "finished", "cancelled": "cancelled", "failed": "failed",
               "interrupted": "stopped when the program running it stopped"}
PROGRESS_FIELDS = {f.name for f in fields(Progress)}


def curve_chart(curve: list[dict]):
    frame = pd.DataFrame(curve)
    if frame.empty or "epoch" not in frame:
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if "train_loss" in frame and frame["train_loss"].notna().any():
        fig.add_trace(go.Scatter(x=frame["epoch"], y=frame["train_loss"], name="training loss",
                                 mode="lines+markers", line=dict(color="#8D6E63")), secondary_y=False)
    if "val_accuracy" in frame and frame["val_accuracy"].notna().any():
        fig.add_trace(go.Scatter(x=frame["epoch"], y=frame["val_accuracy"], name="validation accuracy",
                                 mode="lines+markers", line=dict(color="#2E7D32")), secondary_y=True)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="training loss", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="validation accuracy", secondary_y=True, range=[0, 1.02], tickformat=".0%",
                     dtick=0.2, showgrid=False)
    fig.update_layout(height=340, margin=dict(t=30, b=10), legend=dict(orientation="h", y=1.15))
    return fig


def show_status(run_id: str, status: dict) -> None:
    state = status.get("state", "running")
    progress = status.get("progress")
    if state == "running" and progress:
        draw_progress(Progress(**{k: v for k, v in progress.items() if k in PROGRESS_FIELDS}))
    fig = curve_chart(status.get("curve") or [])
    if fig is not None:
        st.plotly_chart(fig, key=f"curve-{run_id}")
        st.caption("Validation accuracy is measured on training photos set aside to pick the best epoch; the "
                   "held-out test photos are only used once, at the end.")
    elif state == "running":
        st.caption("The training curve appears after the first epoch.")
    if state == "completed":
        run = store().get(run_id)
        m, t = run.metrics, run.timings
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Accuracy", percent(m.get("accuracy")), help="On the held-out photos, as for top-tuning.")
        c2.metric("Balanced accuracy", percent(m.get("balanced_accuracy")))
        c3.metric("Macro F1", percent(m.get("macro_f1")))
        c4.metric("Training time", seconds(training_seconds(run)))
        if t.get("epochs_run"):
            st.caption(f"{t['epochs_run']} epoch(s) run; best epoch {t.get('best_epoch')}; "
                       f"stopped because: {t.get('stop_reason') or 'all epochs done'}.")
        st.page_link(PAGES["compare"], label="Compare with top-tuning →", icon=":material/scatter_plot:")
    elif state in ("failed", "interrupted"):
        st.error(status.get("error") or "The fine-tune stopped.")
    elif state == "cancelled":
        st.warning(status.get("error") or "The fine-tune was cancelled.")


def follow(run_id: str) -> None:
    """Live view of one fine-tune: a fragment that reads its recorded status every second while it runs."""
    try:
        job = FinetuneJob.attach(run_id)
        first = job.status()
    except RunNotFound:
        st.info("That fine-tune is no longer recorded.")
        return
    was_running = first.get("state") == "running"

    def body() -> None:
        status = job.status()
        state = status.get("state", "running")
        st.markdown(f"**Fine-tune {run_id}** · {STATE_WORDS.get(state, state)}")
        if state == "running":
            if st.button("Cancel fine-tune", key=f"cancel-ft-{run_id}"):
                with st.spinner("Stopping the training…"):
                    job.cancel()
                st.rerun()
        elif was_running:
            st.rerun()
        show_status(run_id, status)

    st.fragment(run_every=1.0 if was_running else None)(body)()


def start_form() -> None:
    choice = current_dataset()
    if not choice:
        st.info("Choose a dataset first.")
        st.page_link(PAGES["data"], label="Go to Data →", icon=":material/photo_library:")
        return
    ds = scan_dataset(choice["path"])
    seed, test_size = split_settings()
    st.write(f"**Data:** {choice['label']} · {len(ds):,} photos · {len(ds.classes)} classes · "
             f"{test_size:.0%} held out for testing (seed {seed}), as for top-tuning.")
    defaults = dict(finetune.FINETUNE_DEFAULTS)
    names = list(CATALOGUE)
    c1, c2, c3 = st.columns(3)
    backbone = c1.selectbox("Backbone", names, index=names.index(DEFAULT_BACKBONE), key="ft_backbone")
    epochs = c2.number_input("Epochs training the whole network", min_value=1, max_value=200,
                             value=int(defaults.get("epochs") or 4), step=1, key="ft_epochs",
                             help=f"After {defaults.get('head_epochs', 1)} epoch(s) training only the new "
                                  "classification head. Training stops early when it stops improving.")
    budget_min = c3.number_input("Time limit (minutes, 0 = none)", min_value=0, max_value=24 * 60,
                                 value=int(round((defaults.get("budget_seconds") or 0) / 60)), step=1,
                                 key="ft_budget", help="Training stops after this time even if epochs are left.")
    with st.expander("How it is trained (other settings at their defaults)"):
        recipe = getattr(finetune, "FINETUNE_RECIPE", {})
        if recipe:
            st.dataframe(pd.DataFrame({"what": list(recipe), "how": list(recipe.values())}), hide_index=True)
        st.dataframe(pd.DataFrame({"setting": list(defaults), "default": [str(v) for v in defaults.values()]}),
                     hide_index=True)
    if st.button("Start fine-tuning", type="primary", icon=":material/model_training:"):
        job = FinetuneJob.start(choice["path"], backbone=backbone, seed=seed, test_size=test_size,
                                         epochs=int(epochs), budget_seconds=float(budget_min * 60) or None)
        remember("finetune_run", job.run_id)
        st.rerun()


def page() -> None:
    if finetune is None:
        st.info("The fine-tuning engine is not installed in this version of the tool; top-tuning works "
                "without it.")
        return
    running = store().list(status="running", method="finetune")
    if running:
        st.subheader("Running")
        st.caption("One fine-tune runs at a time (it uses the whole computer); start another when this one ends. "
                   "You can leave this page or reload it: the training goes on.")
        for run in running:
            follow(run.id)
    else:
        start_form()
    mine = remembered_run("finetune_run")
    if mine and mine not in {r.id for r in running}:
        try:
            store().get(mine)
        except RunNotFound:
            return
        st.subheader("Latest fine-tune")
        follow(mine)


with friendly_errors():
    page()
