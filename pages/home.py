"""Home: what top-tuning is, in three sentences, and a one-click start with the demo dataset."""

import streamlit as st

from pages._router import PAGES, through_router
from pages._state import choose_dataset, completed_runs, settings
from pages._widgets import friendly_errors, percent
from toptune_core.backbones.catalogue import DEFAULT_BACKBONE, DEFAULT_RESOLUTION
from toptune_core.features.views import DEFAULT_VIEWS, n_views
from toptune_core.methods.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER
from toptune_core.warmup import warm_up_status
from toptune_core.workspace import demo_choice

through_router()
st.title("Toptune: diagnose leaf photos")
st.markdown(
    "**Top-tuning** takes a network already trained on millions of everyday photos, keeps it frozen, and uses it "
    "to turn each of your leaf photos into a list of numbers that describe what it sees. "
    "A small, fast classifier then learns from those numbers which class each photo belongs to (by default "
    f"{CLASSIFIERS[DEFAULT_CLASSIFIER].label.lower()} on each photo seen in {n_views(DEFAULT_VIEWS)} views, every "
    f"flip and quarter turn, at {DEFAULT_RESOLUTION.get(DEFAULT_BACKBONE, 224)} px: the settings the estimate for "
    "new photos chose; the kernel method of the top-tuning paper, a Random Forest, the Eden notebooks' choice, and "
    "others are one click away), so training takes seconds on a laptop instead of hours on a graphics card. "
    "Every model is tested on photos it never saw during training, so the accuracy you see is what to expect "
    "on new photos."
)

if st.button("Try the demo dataset", type="primary", icon=":material/play_arrow:"):
    with friendly_errors():
        choose_dataset(demo_choice())
        st.switch_page(PAGES["data"])


def warm_up_line(following: bool = False) -> None:
    """A live demo's server reads the demo photos as it starts (``make serve``): say so while it does."""
    state = warm_up_status(settings())
    if state is None:
        return
    if state["state"] == "running":
        done = f" ({state['done']:g} of {state['total']:g} photos)" if state.get("total") else ""
        st.info(f"Warming up: this server is reading the demo photos{done}. A top-tune of the demo started now "
                "waits for them, then takes seconds.", icon=":material/hourglass_top:")
    elif following:  # done while followed: redraw the page once, without the 2-second refresh
        st.rerun()
    elif state["state"] == "ready":
        st.caption(":material/bolt: The demo photos are read and cached: the demo's first top-tune takes seconds.")


if (warm_up_status(settings()) or {}).get("state") == "running":
    st.fragment(run_every=2.0)(warm_up_line)(following=True)
else:
    warm_up_line()

st.markdown("##### The steps")
st.page_link(PAGES["data"], label="1 · Data: choose your photos (demo, Eden Library, a folder or a zip)")
st.page_link(PAGES["toptune"], label="2 · Top-tune: train a classifier on a frozen backbone in seconds")
st.page_link(PAGES["finetune"], label="3 · Fine-tune: the slow comparison, running in the background")
st.page_link(PAGES["compare"], label="4 · Compare: accuracy against training time for every run")
st.page_link(PAGES["predictions"], label="5 · Predictions: where a model is right and wrong")
st.page_link(PAGES["classify"], label="6 · Classify a photo: diagnose one leaf")

st.markdown("##### When the answer is \"not recognised\"")
st.markdown(
    "Each model also remembers what its training photos look like. A photo that looks like none of them (another "
    "crop, a photo that is not a leaf, a very dark or blurred shot) gets **\"not recognised\"** instead of a "
    "class, with what to do next. The check is set on the training photos only so that it accepts about 95 % of "
    "photos like them (measured on each model's held-out photos and shown beside it).\n\n"
    "**Its limit, stated plainly:** a *new disease of the same crop* usually still looks like a leaf of that crop. "
    "On the bean photos, a model trained with one disease left out refused only 17 % to 32 % of that disease's "
    "photos (see the README for the figures on the full bean set and the other checks tried); the rest got one "
    "of the classes it knows. "
    "Do not rely on it to catch a disease the model was never taught."
)

with friendly_errors():
    runs = completed_runs()
    if runs:
        best = max(runs, key=lambda r: (r.accuracy, r.created))
        st.caption(f"{len(runs)} trained model(s) so far; the best reaches {percent(best.accuracy)} held-out "
                   f"accuracy ({best.backbone}, {'top-tuned' if best.method == 'toptune' else 'fine-tuned'}).")
