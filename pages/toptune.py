"""Top-tune: a frozen backbone's features (cached) and a top classifier, trained in a background job; or a sweep
of every backbone x classifier."""

from __future__ import annotations

from typing import Optional

import pandas as pd
import streamlit as st

from pages._router import PAGES, through_router
from pages._state import feature_cache, find_run, job_for, remember, split_kind, start_job, store, visitor
from pages._widgets import (choose_extractor, chosen_extractor_for, draw_failure, follow_job, friendly_errors,
                            need_dataset, percent, seconds)
from toptune_core.backbones.catalogue import CATALOGUE, DEFAULT_BACKBONE, DEFAULT_RESOLUTION, describe
from toptune_core.backbones.pixels import RESOLUTIONS
from toptune_core.features.estimate import estimate_extraction
from toptune_core.features.views import DEFAULT_VIEWS
from toptune_core.features.views import LABELS as VIEW_LABELS
from toptune_core.data.duplicates import describe_leakage
from toptune_core.features import engines
from toptune_core.experiment import run_toptuning
from toptune_core.jobs.view import JobView
from toptune_core.leakage import reference_comes_first
from toptune_core.methods.toptuner import TopTuner
from toptune_core.methods.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER
from toptune_core.reports import runs_frame
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.sweep import offline_backbones, run_sweep

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
    show_choice(run)
    changed = stages_line(run)
    if changed:
        st.info(changed, icon=":material/layers:")
    st.caption(":material/content_copy: " + describe_leakage(s.get("near_duplicates") or {}))
    if s.get("unreadable"):
        with st.expander(f"{len(s['unreadable'])} photo(s) could not be read and were skipped"):
            st.dataframe(pd.DataFrame(s["unreadable"], columns=["photo", "problem"]), hide_index=True)
    engine = (f" · Engine: {engines.describe(t['engine'], precision=t.get('precision'))}"
              if t.get("engine") else "")
    st.caption(f"Run {run.id} · {run.backbone} · {CLASSIFIERS[run.classifier].label} · {s.get('method')}{engine}")
    st.page_link(PAGES["compare"], label="Compare with other runs →", icon=":material/scatter_plot:")
    st.page_link(PAGES["predictions"], label="See its predictions →", icon=":material/grid_on:")
    st.page_link(PAGES["classify"], label="Classify a photo with it →", icon=":material/eco:")


def show_choice(run: RunRecord) -> None:
    """What cross-validation on the training photos chose: the CV table (automatic choice), the kernel's settings."""
    choice = (run.params or {}).get("classifier_choice") or {}
    if choice.get("cv_table"):
        chosen = CLASSIFIERS[choice["chosen"]].label
        st.markdown(f"**Automatic choice: {chosen}**, by {choice['cv']} (the held-out photos were not used).")
        st.dataframe(pd.DataFrame([{"classifier": r["label"], "estimated accuracy": r["mean_accuracy"],
                                    "standard error": r.get("std_error", r["std_accuracy"]),
                                    "fit time per fold (s)": r["fit_seconds"],
                                    "chosen": r["chosen"]} for r in choice["cv_table"]]),
                     hide_index=True, key=f"cv_table_{run.id}",
                     column_config={"estimated accuracy": st.column_config.NumberColumn(format="%.3f"),
                                    "standard error": st.column_config.NumberColumn(format="%.3f"),
                                    "fit time per fold (s)": st.column_config.NumberColumn(format="%.2f")})
    kernel = choice.get("chosen_settings", choice)
    if "gamma" in kernel:
        st.caption(f"Kernel chosen by cross-validation on the training photos: width gamma {kernel['gamma']:g}, "
                   f"penalty {kernel['alpha']:g}, {kernel['n_centres']} centres (left-out accuracy "
                   f"{kernel['cv_accuracy']:.3f}).")


def toptune_finished(view: JobView) -> None:
    if view.state == "completed":
        job = job_for("toptune")
        if job is not None and job.claim("remembered"):
            remember("last_run", view.result)
        show_run(find_run(view.result))
    else:
        draw_failure(view)


def feature_choices(backbone: str) -> tuple[str, int]:
    """The view set and the input resolution, defaults shown (chosen by the estimate for new photos, README)."""
    spec = CATALOGUE[backbone]
    sides = sorted({spec.input_size, *RESOLUTIONS})
    default_side = DEFAULT_RESOLUTION.get(backbone, spec.input_size)
    c1, c2 = st.columns(2)
    view_names = list(VIEW_LABELS)
    views = c1.radio("Views of each photo", view_names, index=view_names.index(DEFAULT_VIEWS), key="tt_views",
                     format_func=lambda v: VIEW_LABELS[v] + (" · default" if v == DEFAULT_VIEWS else ""),
                     help="A leaf has no 'up': turned or mirrored it is the same leaf. The classifier learns from "
                          "every view of each training photo, and a new photo's answer is the average over its "
                          "views. More views: better on new photos, slower first extraction.")
    resolution = c2.selectbox("Input resolution (pixels)", sides, index=sides.index(default_side),
                              key=f"tt_resolution_{backbone}",
                              format_func=lambda r: f"{r} px" + (" · the backbone's own" if r == spec.input_size
                                                                 else "") + (" · default" if r == default_side
                                                                             else ""),
                              help="The square size each photo is resized and cropped to before the backbone. "
                                   "Larger sees finer spots and costs more per photo.")
    return views, resolution


def extraction_cost(ds, extractor, cache, reference_first: bool = True) -> str:
    """What this run will extract, in plain words: the photos and views not yet in the cache, and when the first
    and the final model should be ready at this machine's measured rate (``features.estimate``)."""
    est = estimate_extraction(ds, extractor, cache, reference_first=reference_first)
    if est.final_passes == 0:
        return "every feature is in the cache: training takes a second or two."
    line = (f"{est.photos_to_extract:,} of the {len(ds):,} photos need {extractor.n_views} view(s) each read by the "
            "backbone (the others' features are in the cache).")
    if est.rate is None:
        return line + (" This machine's speed is not measured yet: the first run measures it."
                       + (" A first model on one view comes first, then the final one." if est.staged else ""))
    if est.staged:
        return line + (f" First model (one view) in about {seconds(est.first_seconds)}, final model "
                       f"({extractor.n_views} views) in about {seconds(est.final_seconds)}, at this machine's "
                       f"measured rate ({est.rate:,.0f} backbone passes/s).")
    return line + f" About {seconds(est.final_seconds)} at this machine's measured rate."


def stages_line(run: RunRecord) -> Optional[str]:
    """What changed between a progressive run's first and final model, in plain words (None: one stage)."""
    stages = (run.metrics or {}).get("stages") or []
    if len(stages) < 2:
        return None
    first, last = stages[0], stages[-1]
    if last.get("status") == "cancelled":
        return (f"The final stage was cancelled: this is the first model ({first['n_views']} view of each photo, "
                f"accuracy {percent(first['accuracy'])}). Its features are kept: the next run extracts only the "
                "other views.")
    change = last["accuracy"] - first["accuracy"]
    return (f"First model ({first['n_views']} view of each photo) after {seconds(first['seconds'])}: accuracy "
            f"{percent(first['accuracy'])}. Final model ({last['n_views']} views) after {seconds(last['seconds'])}: "
            f"{percent(last['accuracy'])} ({change * 100:+.1f} points on the same held-out photos). The final "
            "model replaced the first.")


def draw_first_model(view: JobView) -> None:
    """While the final model is on its way: the first model's result, already usable."""
    ids = view.params.get("stage_runs") or []
    if not ids:
        return
    run = find_run(ids[-1])
    stage = ((run.metrics or {}).get("stages") or [{}])[-1]
    if stage.get("status") == "first":
        st.success(f"First model ready after {seconds(stage['seconds'])}: accuracy {percent(stage['accuracy'])} on "
                   f"{run.split.get('n_test')} held-out photos, with one view of each photo. It can classify photos "
                   f"now; the final model ({view.params.get('n_views')} views) replaces it when the other views "
                   "are read.", icon=":material/bolt:")


def start_toptune(data: str, backbone: str, classifier: str, seed: int, test_size: float, extractor, cache):
    """The top-tuning job (everything it needs is passed in: workers never touch the session); the views and the
    input resolution are the extractor's."""
    run_store = store()
    how = split_kind()

    stage_runs: list[str] = []  # shared with the job's params: the page shows the first model while it runs

    def target(progress, should_cancel):
        run = run_toptuning(data, backbone=backbone, classifier=classifier, seed=seed, test_size=test_size,
                            split=how, store=run_store, cache=cache, extractor=extractor, progress=progress,
                            should_cancel=should_cancel, views=extractor.views, resolution=extractor.resolution,
                            on_stage=lambda run: stage_runs.append(run.id))
        return run.id

    return start_job("toptune", f"Top-tuning {backbone} + {CLASSIFIERS[classifier].label}", target,
                     {"home": str(run_store.root), "backbone": backbone, "classifier": classifier,
                      "stage_runs": stage_runs, "n_views": extractor.n_views})


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
    classifier = st.radio("Top classifier", kinds, index=kinds.index(DEFAULT_CLASSIFIER),
                          format_func=lambda k: CLASSIFIERS[k].label, horizontal=True, key="tt_classifier")
    st.caption(f"Settings: {CLASSIFIERS[classifier].settings}.")

    views, resolution = feature_choices(backbone)
    extractor = choose_extractor(backbone, views, resolution)
    cache = feature_cache()
    cached = cache.views_in(cache.key(ds.fingerprint(), extractor.cache_identity)) >= extractor.n_views
    engine = engines.describe(extractor.engine_name, precision=extractor.engine_precision)
    st.caption(f":material/memory: Engine: {engine}"
               + (" (bf16 where this CPU computes it natively; TOPTUNE_PRECISION=f32 turns it off)"
                  if extractor.engine_precision == "bf16" else ""))
    if cached:
        st.caption(":material/bolt: The features of these photos with these settings are in the cache: training "
                   "takes a second or two.")
    else:
        first = reference_comes_first(split_kind(), TopTuner(backbone, classifier))
        st.caption(f":material/schedule: This run: {extraction_cost(ds, extractor, cache, first)} After that the "
                   "features come from the cache and every run takes a second or two.")

    job = job_for("toptune")
    busy = job is not None and job.view().active
    if st.button("Top-tune", type="primary", icon=":material/bolt:", disabled=busy):
        with friendly_errors():  # a limit reached: one line, and the page goes on
            visitor().check_new_run()
            job = start_toptune(choice["path"], backbone, classifier, seed, test_size, extractor, cache)
    if job is not None:
        follow_job(job, toptune_finished, draw_running=draw_first_model)
    st.divider()
    sweep_section(choice["path"], seed, test_size)


def sweep_finished(view: JobView) -> None:
    if view.state != "completed":
        draw_failure(view)
        return
    runs_by_id = {r.id: r for r in RunStore(view.params["home"]).list(status="completed")}
    runs = [runs_by_id[i] for i in view.result["runs"] if i in runs_by_id]
    st.success(f"Swept {len(runs)} combination(s); every one is a recorded run on the Compare page.")
    frame = runs_frame(runs, include_extraction=True)
    st.dataframe(frame[["backbone", "classifier", "accuracy", "macro F1", "training time (s)", "best trade-off",
                        "features from cache", "run"]], hide_index=True, key="sweep_table",
                 column_config={"accuracy": st.column_config.NumberColumn(format="%.3f"),
                                "macro F1": st.column_config.NumberColumn(format="%.3f"),
                                "training time (s)": st.column_config.NumberColumn(format="%.1f")})
    for backbone, classifier, reason in view.result["failures"]:
        st.warning(f"{backbone} + {CLASSIFIERS[classifier].label} failed: {reason}")
    st.page_link(PAGES["compare"], label="Compare them →", icon=":material/scatter_plot:")


def sweep_section(data: str, seed: int, test_size: float) -> None:
    """One button: every chosen backbone x classifier, one progress bar, each a recorded run."""
    st.subheader("Sweep: every backbone × classifier")
    st.caption("Each backbone reads the photos once (then from the cache); every combination becomes a run on "
               "the Compare page, which marks the best trade-offs between accuracy and training time.")
    c1, c2 = st.columns(2)
    backbones = c1.multiselect("Backbones", list(CATALOGUE), default=offline_backbones(), key="sw_backbones")
    classifiers = c2.multiselect("Classifiers", list(CLASSIFIERS), default=list(CLASSIFIERS), key="sw_classifiers",
                                 format_func=lambda k: CLASSIFIERS[k].label)
    job = job_for("sweep")
    busy = job is not None and job.view().active
    if st.button("Sweep", icon=":material/grid_view:", disabled=busy or not backbones or not classifiers):
        run_store, cache, how = store(), feature_cache(), split_kind()
        extractors = {b: chosen_extractor_for(b) for b in backbones}  # here: the job never touches the session

        def target(progress, should_cancel):
            result = run_sweep(data, backbones=backbones, classifiers=classifiers, seed=seed, test_size=test_size,
                               split=how, store=run_store, cache=cache, extractor_for=extractors.get,
                               progress=progress, should_cancel=should_cancel)
            return {"runs": [r.id for r in result.runs], "failures": result.failures}

        job = start_job("sweep", f"Sweeping {len(backbones)} backbone(s) × {len(classifiers)} classifier(s)", target,
                        {"home": str(run_store.root)})
    if job is not None:
        follow_job(job, sweep_finished)


with friendly_errors():
    page()
