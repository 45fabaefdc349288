"""The comparison fine-tune: same split as top-tuning, held-out photos untouched, cancel, crash, classify a photo.

Real photos (a copy of 20 per class of the demo data) and the real offline
tf_efficientnet_lite0 weights; runs are tiny (one short epoch, small batches,
mostly only the last block trainable) so the whole file takes a minute or two
on a 2-CPU machine. Accuracy on the full iBean set is measured by the
``compare`` benchmark command, not here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from toptune_core.backbones import pixels as pixel_pipeline
from toptune_core.errors import ToptuneError
from toptune_core.features.cache import FeatureCache
from toptune_core.finetune import FINETUNE_DEFAULTS, load_finetuned, run_finetuning
from toptune_core.methods.finetuner import FineTuner
from toptune_core.jobs.process import FinetuneJob
from toptune_core.predict import Predictor
from toptune_core.runs.store import RunStore
from toptune_core.experiment import run_toptuning

# A tiny but complete fine-tune: one epoch, the last block and the head trainable. Batches of 11: the 33
# photos left for fitting (42 in the training part, 9 of them for validation) make 3 full batches, so no photo
# is left out of the one epoch.
# One test view: these tests are about the split and the training; the default views are the command line's test.
TINY = dict(epochs=1, head_epochs=0, batch_size=11, freeze_blocks=1, val_fraction=0.2, budget_seconds=None,
            test_views="1")


def _beans_with_bad_photos(src: Path, dest: Path) -> Path:
    """A copy of the 60-photo set plus two unreadable files, so the readability rule matters for the split."""
    data = shutil.copytree(src, dest)
    (data / "healthy" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = sorted((data / "bean_rust").glob("*.jpg"))[0]
    (data / "bean_rust" / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    return data


@pytest.fixture(scope="module")
def compared(small_dataset, lite0_extractor, tmp_path_factory):
    """A top-tuning run and a fine-tune on the same data (seed 7, 30% held out), in one store.

    While the fine-tune runs, every photo the fine-tune code decodes is noted,
    with whether it was decoded inside ``FineTuner.fit`` (training and early
    stopping) or inside ``predict_proba`` (scoring).
    """
    root = tmp_path_factory.mktemp("compared")
    data = _beans_with_bad_photos(small_dataset, root / "beans")
    loaded: dict[str, list[str]] = {"fit": [], "predict": [], "embed": [], "other": []}
    where = ["other"]
    real_load, real_fit, real_proba = pixel_pipeline.load_rgb, FineTuner.fit, FineTuner.predict_proba
    real_embed = FineTuner.embed

    def spy_load(source, **kwargs):
        loaded[where[0]].append(str(source))
        return real_load(source, **kwargs)

    def spy_fit(self, *args, **kwargs):
        where[0] = "fit"
        try:
            return real_fit(self, *args, **kwargs)
        finally:
            where[0] = "other"

    def spy_proba(self, *args, **kwargs):
        where[0] = "predict"
        try:
            return real_proba(self, *args, **kwargs)
        finally:
            where[0] = "other"

    def spy_embed(self, *args, **kwargs):
        where[0] = "embed"
        try:
            return real_embed(self, *args, **kwargs)
        finally:
            where[0] = "other"

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOPTUNE_HOME", str(root / "home"))
        store = RunStore(root / "home")
        top = run_toptuning(data, classifier="logreg", seed=7, test_size=0.3, store=store,
                            cache=FeatureCache(root / "home" / "features"), extractor=lite0_extractor)
        mp.setattr(pixel_pipeline, "load_rgb", spy_load)
        mp.setattr(FineTuner, "fit", spy_fit)
        mp.setattr(FineTuner, "predict_proba", spy_proba)
        mp.setattr(FineTuner, "embed", spy_embed)
        events = []
        ft = run_finetuning(data, seed=7, test_size=0.3, store=store, progress=events.append, **TINY)
    return {"data": data, "store": store, "top": top, "ft": ft, "loaded": loaded, "events": events}


def test_split_equals_the_toptuning_split(compared):
    top, ft = compared["top"], compared["ft"]
    assert ft.status == "completed" and ft.method == "finetune" and top.status == "completed"
    assert ft.split["test_files"] == top.split["test_files"]  # the same held-out photos, in the same order
    assert (ft.split["n_train"], ft.split["n_test"]) == (top.split["n_train"], top.split["n_test"])
    assert ft.split["n_train"] + ft.split["n_test"] == 60 and 8 <= ft.split["n_test"] <= 28  # about 30 % held out
    assert ft.split["method"] == top.split["method"]
    # Both skipped the same two unreadable photos, by the same rule.
    assert sorted(p for p, _ in ft.split["unreadable"]) == sorted(p for p, _ in top.split["unreadable"]) \
        == ["bean_rust/truncated.jpg", "healthy/broken.jpg"]


def test_held_out_photos_never_train_or_pick_the_epoch(compared):
    data, ft, loaded = compared["data"], compared["ft"], compared["loaded"]
    test_files = set(ft.split["test_files"])
    readable = {str(p) for p in sorted(data.rglob("*.jpg")) if p.name not in ("broken.jpg", "truncated.jpg")}
    training_part = readable - test_files
    assert len(training_part) == ft.split["n_train"]  # (the content-hash split: about 70 % of the 58 readable)
    in_fit = set(loaded["fit"])
    # Inside fit (training steps and the validation that picks the epoch) only training-part photos are read, and
    # as many as one epoch reads (full batches of the training photos, every validation photo: the spy saw the fit).
    assert in_fit <= training_part
    n_val, bs = ft.split["n_val"], TINY["batch_size"]
    n_fit = len(training_part) - n_val
    assert len(in_fit) == (n_fit // bs * bs if n_fit >= 2 * bs else n_fit) + n_val  # (finetune.loop: drop_last)
    assert not in_fit & test_files
    val_files = {str(data / rel) for rel in ft.split["val_files"]}
    assert ft.split["n_val"] == len(val_files) and 0 < len(val_files) < len(training_part) and \
        val_files <= training_part
    # The held-out photos are read once, to score the final model (their penultimate features give both the
    # class probabilities and the familiarity verdict); the familiarity calibration reads training photos only.
    scored = [p for p in loaded["predict"] + loaded["embed"] if p in test_files]
    assert sorted(scored) == sorted(test_files)
    assert set(loaded["embed"]) - test_files == training_part
    assert ft.metrics["familiarity"]["coverage"] is not None and "familiarity" in ft.params


def test_finetune_run_is_recorded_like_a_toptuned_one(compared):
    ft, store, events = compared["ft"], compared["store"], compared["events"]
    again = store.get(ft.id)
    assert again.status == "completed" and again.metrics == ft.metrics
    m = ft.metrics
    assert {"accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "per_class"} <= set(m)
    preds = ft.predictions()
    assert len(preds) == ft.split["n_test"] and set(preds["path"]) == set(ft.split["test_files"])
    assert np.isclose(preds["correct"].mean(), m["accuracy"])
    assert np.array(m["confusion_matrix"]).sum() == ft.split["n_test"]
    assert len(ft.curve) == 1 and ft.curve[0]["phase"] == "full" and ft.curve[0]["val_accuracy"] is not None
    assert {"epoch", "phase", "train_loss", "val_accuracy", "lr", "elapsed"} <= set(ft.curve[0])
    t = ft.timings
    assert t["epochs_run"] == 1 and t["train_seconds"] > 0 and t["device"] == "cpu"
    assert ft.params["hyper"]["freeze_blocks"] == 1 and ft.params["seed"] == 7
    assert (ft.dir / "model.safetensors").is_file() and (ft.dir / "finetune.json").is_file()
    # Progress came per step and per epoch, with loss, elapsed time and the validation score.
    train = [e for e in events if e.stage == "train"]
    assert any(e.step >= 1 and e.loss is not None and e.elapsed > 0 for e in train)
    assert any(e.epoch_end and e.val_accuracy is not None for e in train)


def test_a_finetuned_run_classifies_a_single_photo(compared):
    ft, store = compared["ft"], compared["store"]
    row = ft.predictions().iloc[0]
    predictor = Predictor.from_run(ft.id, store=store)
    prediction = predictor.predict(row["path"])
    assert prediction.label == row["predicted"]
    assert np.isclose(prediction.confidence, row["confidence"], atol=1e-4)
    assert predictor.classes == ["angular_leaf_spot", "bean_rust", "healthy"]
    # The same photo as uploaded bytes gives the same answer.
    from_bytes = predictor.predict(Path(row["path"]).read_bytes())
    np.testing.assert_allclose(from_bytes.probabilities, prediction.probabilities, atol=1e-6)
    # A photo that cannot be read is one clear error.
    with pytest.raises(ToptuneError, match="not a readable image"):
        predictor.predict(b"not a photo")


def test_saved_weights_load_strictly(compared, tmp_path):
    ft, store = compared["ft"], compared["store"]
    model = load_finetuned(store, ft)
    assert model.classes == ft.metrics["classes"]
    # Weights of another shape (a 2-class head) are refused with one clear line, not loaded loosely.
    folder = shutil.copytree(ft.dir, tmp_path / "copy")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["classifier.weight"] = state["classifier.weight"][:2].contiguous()
    state["classifier.bias"] = state["classifier.bias"][:2].contiguous()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ToptuneError, match="do not match"):
        FineTuner.load(folder)


def test_bad_settings_are_one_clear_line_and_record_nothing(small_dataset):
    store = RunStore()
    with pytest.raises(ToptuneError, match="batch_size"):
        run_finetuning(small_dataset, store=store, batch_size=0)
    with pytest.raises(ToptuneError, match="Unknown fine-tune setting"):
        run_finetuning(small_dataset, store=store, learning_rate=0.1)
    assert store.list() == []


def test_time_budget_stops_training(small_dataset):
    paths = sorted(str(p) for p in small_dataset.rglob("*.jpg"))[::3]
    labels = [["angular_leaf_spot", "bean_rust", "healthy"].index(Path(p).parent.name) for p in paths]
    tuner = FineTuner(epochs=50, head_epochs=0, batch_size=4, freeze_blocks=0, budget_seconds=2.0,
                      val_fraction=0.3, patience=1000)  # only the budget may stop it
    tuner.fit(paths, labels, ["angular_leaf_spot", "bean_rust", "healthy"])
    # The budget either stops training, or (on a faster machine) re-plans the schedule to fewer epochs that end
    # inside it; either way 50 epochs are never run.
    assert tuner.stop_reason_ in ("reached the time budget", "finished the planned epochs")
    assert 1 <= tuner.epochs_run_ < 50 and len(tuner.curve) == tuner.epochs_run_
    assert tuner.predict_proba(paths[:2]).shape == (2, 3)


# --- the background job -------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _wait_for(job: FinetuneJob, predicate, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job.status()
        if predicate(st) or st["state"] != "running":
            return st
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status {st}")


def _training_after_first_epoch(st: dict) -> bool:
    p = st["progress"] or {}
    return len(st["curve"]) >= 1 and p.get("stage") == "train" and p.get("epoch", 0) >= 2 and p.get("step", 0) >= 1


def test_cancel_stops_a_running_finetune_within_seconds(small_dataset, lite0_extractor, toptune_home):
    store = RunStore()
    earlier = run_toptuning(small_dataset, classifier="logreg", store=store, extractor=lite0_extractor)
    before_runs = {r.id: r for r in store.list()}
    before_files, before_cache = _snapshot(store.runs_dir), _snapshot(FeatureCache().root)
    # Full fine-tuning (every block) with small batches: steps are long enough to cancel in the middle of one.
    job = FinetuneJob.start(small_dataset, epochs=30, head_epochs=1, batch_size=8, budget_seconds=None)
    assert job.status()["state"] == "running" and store.get(job.run_id).method == "finetune"
    st = _wait_for(job, _training_after_first_epoch)
    assert st["state"] == "running", st
    t0 = time.monotonic()
    job.cancel()
    stopped_in = time.monotonic() - t0
    st = job.status()
    assert st["state"] == "cancelled" and stopped_in < 6, (st["state"], stopped_in)
    assert not job._process.is_alive()
    run = store.get(job.run_id)
    assert run.status == "cancelled" and len(run.curve) >= 1 and run.curve == st["curve"]
    assert not (run.dir / "model.safetensors").exists()  # no half-trained model is kept
    with pytest.raises(ToptuneError, match="cancelled"):
        Predictor.from_run(job.run_id)
    # Earlier runs and the feature cache are untouched.
    assert {r.id: r for r in store.list() if r.id != job.run_id} == before_runs
    after_files = {k: v for k, v in _snapshot(store.runs_dir).items() if not k.startswith(job.run_id)}
    assert after_files == before_files and _snapshot(FeatureCache().root) == before_cache
    assert store.get(earlier.id).status == "completed"
    # Re-attaching (e.g. after a browser reload) shows the same final state.
    assert FinetuneJob.attach(job.run_id).status()["state"] == "cancelled"


def test_a_killed_training_process_is_recorded_interrupted_with_its_curve(small_dataset):
    job = FinetuneJob.start(small_dataset, epochs=0, head_epochs=30, batch_size=8, budget_seconds=None)
    st = _wait_for(job, _training_after_first_epoch)
    assert st["state"] == "running", st
    os.kill(job._process.pid, signal.SIGKILL)  # a crash: no chance to record anything
    job._process.join(10)
    st = job.status()
    assert st["state"] == "interrupted" and len(st["curve"]) >= 1
    assert RunStore().get(job.run_id).status == "interrupted"


# --- command line ---------------------------------------------------------------------------------

def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "toptune_core", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_finetune_writes_the_toptune_json_keys(small_dataset, subprocess_env, tmp_path):
    out = tmp_path / "ft.json"
    result = _cli(["finetune", "--data", str(small_dataset), "--backbone", "tf_efficientnet_lite0", "--views", "1",
                   "--epochs", "1", "--head-epochs", "0", "--freeze-blocks", "0", "--batch-size", "16", "--json",
                   str(out)], subprocess_env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    keys = {"run_id", "method", "backbone", "classifier", "n_train", "n_test", "accuracy", "balanced_accuracy",
            "macro_f1", "extract_seconds", "fit_seconds", "cache_hit", "split", "unreadable_images",
            "train_seconds", "epochs_run"}
    assert keys <= set(summary)
    assert summary["method"] == "finetune" and summary["epochs_run"] == 1 and summary["n_train"] + summary["n_test"] == 60
    assert summary["views"] == "1", "each held-out photo scored with the views of --views"
    assert "held-out accuracy" in result.stdout
    bad = _cli(["finetune", "--data", str(small_dataset), "--epochs", "0", "--head-epochs", "0"], subprocess_env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in bad.stderr


def test_the_command_line_fine_tune_scores_with_the_default_views_as_its_help_says(capsys):
    from toptune_core.cli.finetune import _hyper
    from toptune_core.cli.main import build_parser, main
    from toptune_core.config import Settings
    from toptune_core.features.views import DEFAULT_VIEWS
    from toptune_core.finetune.run import make_finetuner

    def test_views(flags: list[str], env: dict) -> str:
        args = build_parser("finetune").parse_args(["finetune", "--data", "beans", *flags])
        return make_finetuner(**_hyper(args, Settings.from_env(env))).test_views

    assert test_views([], {}) == DEFAULT_VIEWS == FINETUNE_DEFAULTS["test_views"] == "dihedral"
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert f"(default {DEFAULT_VIEWS}, or TOPTUNE_VIEWS)" in " ".join(capsys.readouterr().out.split())
    assert test_views([], {"TOPTUNE_VIEWS": "flip"}) == "flip"
    assert test_views(["--views", "1"], {"TOPTUNE_VIEWS": "flip"}) == "1"


def test_cli_compare_prints_one_table_on_one_split(small_dataset, subprocess_env, tmp_path):
    out = tmp_path / "compare.json"
    # one view: four classifiers (the kernel's and the automatic choice's cross-validation) on 8 views cost 8x more
    result = _cli(["compare", "--data", str(small_dataset), "--views", "1", "--epochs", "1", "--head-epochs", "0",
                   "--freeze-blocks", "0", "--batch-size", "16", "--json", str(out)], subprocess_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["same_test_photos"] is True
    assert [r["method"] for r in report["rows"]] == ["top-tune Random Forest", "top-tune logistic regression",
                                                     "top-tune kernel ridge (Nyström)", "top-tune automatic choice",
                                                     "fine-tune"]
    # What each method trained on: all 45 training photos for top-tuning, fewer for the fine-tune, which keeps
    # some for early stopping.
    trained_on = [r["trained_on"] for r in report["rows"]]
    assert trained_on[0] == "45 photos" and trained_on[2].startswith("45 photos (leave-one-out CV")
    assert trained_on[3].startswith("45 photos (5-fold CV inside them chose ")
    assert trained_on[4].endswith(" for early stopping)") and not trained_on[4].startswith("45 photos")
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 6 and "trained on" in table[0] and "fine-tune" in table[5]
    assert "the same held-out photos" in result.stdout


def test_defaults_are_the_constructor_defaults():
    import inspect

    sig = inspect.signature(FineTuner.__init__)
    ctor = {k: p.default for k, p in sig.parameters.items() if k != "self"}
    assert ctor == FINETUNE_DEFAULTS


def test_both_methods_take_cpus_and_threads_from_the_one_policy(monkeypatch):
    """Top-tuning's extraction and the fine-tune count CPUs the same way (affinity capped by a cgroup quota)."""
    from toptune_core import system
    from toptune_core.features.extractor import FeatureExtractor

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: 3.0)  # e.g. docker --cpus 3 on a 12-CPU host
    policy = system.thread_policy()
    assert policy.cpus == 3 and policy.training_threads == 3
    plan = FeatureExtractor("tf_efficientnet_lite0", device="cpu").plan()
    assert (plan.lanes, plan.threads) == (policy.lanes, policy.lane_threads) == (3, 1)
    assert FineTuner(device="cpu")._threads() == policy.training_threads == 3
    assert FineTuner(num_threads=2)._threads() == 2  # an explicit setting wins
