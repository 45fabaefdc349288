"""Top-tune: a frozen backbone's features (cached) and a Random Forest, trained in a background job."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._router import PAGES, through_router
from pages._state import extractor_for, feature_cache, find_run, job_for, remember, start_job, store, visitor
from pages._widgets import draw_failure, follow_job, friendly_errors, need_dataset, percent, seconds
from toptune_core.backbones.catalogue import CATALOGUE, DEFAULT_BACKBONE, describe
from toptune_core.methods.classifiers import CLASSIFIERS
from toptune_core.jobs.view import JobView
from toptune_core.runs.store import RunRecord
from toptune_core.experiment import run_toptuning

through_router()
st.title("2 · Top-tune")


def backbone_label(name: str) -> str:
    spec = CATALOGUE[name]
    where = "works offline" if spec.offline else "needs internet the first time"
    return f"{name} · {spec.input_size} px input · {spec.feature_dim} features · {where}"


def show_run(run: RunRecord) -> None:
    """The result of a top-tuning run: held-out metrics and where the time went."""
    m, t, s = run.metrics, run.timings, run.split
    if t.get("cache_hit"):
        st.info(f"Features from cache: read in {seconds(t['extract_seconds'])} (extracting them took "
                f"{seconds(t['feature_extraction_seconds'])} the first time).", icon=":material/bolt:")
    else:
        n = s.get("n_train", 0) + s.get("n_test", 0)
        rate = n / t["feature_extraction_seconds"] if t.get("feature_extraction_seconds") else None
        st.info(f"Features extracted from {n:,} photos in {seconds(t['feature_extraction_seconds'])}"
                + (f" ({rate:.1f} photos/s)" if rate else "") + "; they are kept in the cache, so the next run "
                "on these photos with this backbone takes a second or two.")
    st.success(f"Trained and tested in {seconds(t.get('total_seconds'))}: tested on {s.get('n_test')} held-out "
               f"photos never used for training ({s.get('n_train')} photos trained the classifier).")
    c1, c2, c3 = st.columns(3)
    c1.metric("Accuracy", percent(m.get("accuracy")), help="Share of held-out photos classified correctly.")
    c2.metric("Balanced accuracy", percent(m.get("balanced_accuracy")),
              help="Average of the per-class accuracies; fair when classes have different sizes.")
    c3.metric("Macro F1", percent(m.get("macro_f1")), help="Average over classes of precision and recall combined.")
    c1, c2, c3 = st.columns(3)
    c1.metric("Features", seconds(t.get("extract_seconds")), help="Time spent getting the features in this run.")
    c2.metric("Classifier training", seconds(t.get("fit_seconds")))
    c3.metric("Total", seconds(t.get("total_seconds")))
    if s.get("unreadable"):
        with st.expander(f"{len(s['unreadable'])} photo(s) could not be read and were skipped"):
            st.dataframe(pd.DataFrame(s["unreadable"], columns=["photo", "problem"]), hide_index=True)
    st.caption(f"Run {run.id} · {run.backbone} · {CLASSIFIERS[run.classifier].label} · {s.get('method')}")
    st.page_link(PAGES["compare"], label="Compare with other runs →", icon=":material/scatter_plot:")
    st.page_link(PAGES["predictions"], label="See its predictions →", icon=":material/grid_on:")
    st.page_link(PAGES["classify"], label="Classify a photo with it →", icon=":material/eco:")


def toptune_finished(view: JobView) -> None:
    if view.state == "completed":
        job = job_for("toptune")
        if job is not None and job.claim("remembered"):
            remember("last_run", view.result)
        show_run(find_run(view.result))
    else:
        draw_failure(view)


def start_toptune(data: str, backbone: str, classifier: str, seed: int, test_size: float, extractor, cache):
    """The top-tuning job (everything it needs is passed in: workers never touch the session)."""
    run_store = store()

    def target(progress, should_cancel):
        run = run_toptuning(data, backbone=backbone, classifier=classifier, seed=seed, test_size=test_size,
                            store=run_store, cache=cache, extractor=extractor, progress=progress,
                            should_cancel=should_cancel)
        return run.id

    return start_job("toptune", f"Top-tuning {backbone} + {CLASSIFIERS[classifier].label}", target,
                     {"home": str(run_store.root), "backbone": backbone, "classifier": classifier})


def page() -> None:
    needed = need_dataset()
    if not needed:
        return
    choice, ds, seed, test_size = needed

    names = list(CATALOGUE)
    backbone = st.selectbox("Backbone: the pretrained network, kept frozen", names,
                            index=names.index(DEFAULT_BACKBONE), format_func=backbone_label, key="tt_backbone")
    st.caption(CATALOGUE[backbone].description)
    with st.expander("About the backbones"):
        st.dataframe(pd.DataFrame([describe(spec) for spec in CATALOGUE.values()]), hide_index=True)
    kinds = list(CLASSIFIERS)
    classifier = st.radio("Top classifier", kinds, index=kinds.index("rf"), format_func=lambda k: CLASSIFIERS[k].label,
                          horizontal=True, key="tt_classifier")
    st.caption(f"Settings: {CLASSIFIERS[classifier].settings}.")

    extractor = extractor_for(backbone)
    cache = feature_cache()
    cached = cache.path(cache.key(ds.fingerprint(), extractor.cache_identity)).is_dir()
    if cached:
        st.caption(":material/bolt: The features of these photos with this backbone are in the cache: training takes a second "
                   "or two.")
    else:
        st.caption(f"The {len(ds):,} photos are read once with the backbone (the slow part); after that the "
                   "features come from the cache.")

    job = job_for("toptune")
    busy = job is not None and job.view().active
    if st.button("Top-tune", type="primary", icon=":material/bolt:", disabled=busy):
        with friendly_errors():  # a limit reached: one line, and the page goes on
            visitor().check_new_run()
            job = start_toptune(choice["path"], backbone, classifier, seed, test_size, extractor, cache)
    if job is not None:
        follow_job(job, toptune_finished)


with friendly_errors():
    page()
