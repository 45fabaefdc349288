"""Fine-tune: the slow comparison. Trains the whole backbone in a separate process; this page follows it.

The training runs in its own process (``toptune_core.jobs.process.FinetuneJob``),
which records its progress and curve in the run store, so leaving the page,
reloading the browser or opening another tab finds it again by its run id.
The page follows it with the same ``follow_job`` as every other job. The
server trains one fine-tune at a time (``toptune_core.jobs.queue``): a visitor
whose fine-tune waits sees its place in the queue.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._charts import finetune_curve
from pages._router import link, through_router
from pages._state import finetune_job, home, remember, remembered_run, split_kind, store, visitor, workspace
from pages._widgets import follow_job, friendly_errors, need_dataset, percent, seconds
from toptune_core.backbones.catalogue import CATALOGUE, DEFAULT_BACKBONE
from toptune_core.data.duplicates import describe_leakage
from toptune_core.errors import RunNotFound
from toptune_core.features.views import DEFAULT_VIEWS
from toptune_core.features.views import LABELS as VIEW_LABELS
from toptune_core.finetune import FINETUNE_DEFAULTS, FINETUNE_RECIPE
from toptune_core.jobs.queue import Ticket, finetune_queue
from toptune_core.jobs.view import JobView
from toptune_core.reports import training_seconds

through_router()
st.title("3 · Fine-tune (the comparison)")
st.write("Fine-tuning trains every layer of the backbone on your photos. It is the usual way to adapt a "
         "pretrained network, and much slower than top-tuning: run it to see what the extra time buys. "
         "It is tested on the same held-out photos as top-tuning.")

STATE_WORDS = {"completed": "finished", "cancelled": "cancelled", "failed": "failed",
               "interrupted": "stopped when the program running it stopped"}


def draw_curve(view: JobView) -> None:
    fig = finetune_curve(store().get(view.id).curve or [])
    if fig is not None:
        st.plotly_chart(fig, key=f"curve-{view.id}")
        st.caption("Validation accuracy is measured on training photos set aside to pick the best epoch; the "
                   "held-out test photos are only used once, at the end.")
    elif view.active:
        st.caption("The training curve appears after the first epoch.")


def draw_result(run_id: str) -> None:
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
    st.caption(":material/content_copy: " + describe_leakage(run.split.get("near_duplicates") or {}))
    link("compare", "Compare with top-tuning →")


def finetune_finished(view: JobView) -> None:
    st.markdown(f"**{view.title}** · {STATE_WORDS.get(view.state, view.state)}")
    draw_curve(view)
    if view.state == "completed":
        draw_result(view.id)
    elif view.state == "cancelled":
        st.warning(view.error or "The fine-tune was cancelled.")
    else:
        st.error(view.error or "The fine-tune stopped.")


def follow(run_id: str) -> None:
    """Live view of one fine-tune, found again by its run id."""
    try:
        job = finetune_job(run_id)
    except RunNotFound:
        st.info("That fine-tune is no longer recorded.")
        return
    follow_job(job, finetune_finished, draw_running=draw_curve, cancel_label="Cancel fine-tune",
               cancelling="Stopping the training…")


def settings_form(defaults: dict) -> dict:
    """The backbone, epochs and time limit to train with (other settings at their defaults)."""
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
    view_names = list(VIEW_LABELS)
    top_views = st.session_state.get("tt_views", DEFAULT_VIEWS)
    test_views = st.radio("Views of each test photo", view_names, index=view_names.index(top_views),
                          format_func=VIEW_LABELS.get, horizontal=True, key="ft_test_views",
                          help="Set to the views your top-tuned runs use, so both methods answer from the same "
                               "views of each held-out photo and the comparison is fair (its training already sees "
                               "random flips and crops).")
    with st.expander("How it is trained (other settings at their defaults)"):
        st.dataframe(pd.DataFrame({"what": list(FINETUNE_RECIPE), "how": list(FINETUNE_RECIPE.values())}),
                     hide_index=True)
        st.dataframe(pd.DataFrame({"setting": list(defaults), "default": [str(v) for v in defaults.values()]}),
                     hide_index=True)
    return {"backbone": backbone, "epochs": int(epochs), "budget_seconds": float(budget_min * 60) or None,
            "test_views": test_views}


def start_form() -> None:
    needed = need_dataset(", as for top-tuning")
    if not needed:
        return
    choice, _, seed, test_size = needed
    chosen = settings_form(dict(FINETUNE_DEFAULTS))
    queue = finetune_queue()
    if queue.running_count():
        st.caption("Another visitor's fine-tune is training now; yours will wait for it (one at a time on this "
                   "server).")
    if st.button("Start fine-tuning", type="primary", icon=":material/model_training:"):
        with friendly_errors():  # a limit reached: one line, and the page goes on
            submit(queue, choice["path"], seed, test_size, chosen)


def submit(queue, data: str, seed: int, test_size: float, chosen: dict) -> None:
    """Queue this visitor's fine-tune (it starts now if the slot is free)."""
    me = visitor()
    me.check_new_run()
    ws = workspace()
    ticket = queue.submit(me.key, data, store_root=home(), seed=seed, test_size=test_size, split=split_kind(),
                          on_start=lambda run_id: ws.update(finetune_run=run_id), **chosen)
    if ticket.error:
        st.error(ticket.error)
        return
    st.session_state["ft_ticket"] = ticket.id
    if ticket.run_id:
        remember("finetune_run", ticket.run_id)
    st.rerun()


def show_waiting(ticket: Ticket) -> None:
    """A fine-tune waiting for the server's fine-tune slot: its place in the queue, refreshed every 2 s."""
    st.subheader("Waiting")
    queue = finetune_queue()

    @st.fragment(run_every=2)
    def body() -> None:
        position = queue.position(ticket)
        if not ticket.waiting:
            st.rerun()  # it started (or could not): redraw the whole page
        st.info(f"Your fine-tune is number {position} in the queue. The server trains one fine-tune at a time; it "
                "starts by itself when the ones before it end. You can leave this page.",
                icon=":material/hourglass_top:")
        if st.button("Leave the queue", key="ft_leave"):
            queue.cancel(ticket.id, visitor().key)
            st.rerun()

    body()


def started_ticket() -> None:
    """Remember the run of this tab's fine-tune that left the queue while the tab looked elsewhere."""
    ticket = finetune_queue().ticket(st.session_state.get("ft_ticket"), visitor().key)
    if ticket is not None and ticket.run_id and remembered_run("finetune_run") != ticket.run_id:
        remember("finetune_run", ticket.run_id)
    elif ticket is not None and ticket.error and not ticket.waiting:
        st.error(ticket.error)
        del st.session_state["ft_ticket"]


def page() -> None:
    started_ticket()
    running = store().list(status="running", method="finetune")
    waiting = finetune_queue().waiting_ticket(visitor().key)
    if running:
        st.subheader("Running")
        st.caption("One fine-tune runs at a time (it uses the whole computer); start another when this one ends. "
                   "You can leave this page or reload it: the training goes on.")
        for run in running:
            follow(run.id)
    elif waiting is not None:
        show_waiting(waiting)
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
