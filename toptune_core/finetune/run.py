"""The recorded fine-tune (``run_finetuning``) and loading a finished one (``load_finetuned``).

``run_finetuning`` is ``experiment.run_experiment`` with a ``FineTuner``: the
same pipeline as top-tuning (read -> split -> fit -> predict_proba ->
evaluate -> save -> record), so both methods are tested on the same photos
and recorded alike. Only the settings are checked here first, so a bad
setting is one clear line and records nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.errors import ToptuneError
from toptune_core.finetune.defaults import FINETUNE_DEFAULTS
from toptune_core.methods.finetuner import FineTuner
from toptune_core.progress import CancelCheck, ProgressCallback
from toptune_core.runs.store import RunRecord, RunStore


def make_finetuner(backbone: str = DEFAULT_BACKBONE, seed: int = 0, **hyper: Any) -> FineTuner:
    """A checked ``FineTuner``; a ToptuneError names an unknown or impossible setting."""
    settable = [k for k in FINETUNE_DEFAULTS if k not in ("backbone", "seed")]
    unknown = sorted(set(hyper) - set(settable))
    if unknown:
        raise ToptuneError(f"Unknown fine-tune setting(s): {', '.join(unknown)}. Known: {', '.join(settable)}.")
    return FineTuner(backbone=backbone, seed=seed, **hyper).check_params()


def run_finetuning(data: str | Path, *, test_data: Optional[str | Path] = None, backbone: str = DEFAULT_BACKBONE,
                   seed: int = 0, test_size: float = 0.25, split: str = "random", store: Optional[RunStore] = None,
                   progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None,
                   run_id: Optional[str] = None, **hyper: Any) -> RunRecord:
    """Fine-tune ``backbone`` on ``data`` with the top-tuning split; returns the recorded run (method 'finetune').

    The run is recorded as ``running`` first; its curve is updated after every
    epoch; it ends ``completed`` (metrics on the held-out photos, per-image
    predictions, weights), or ``cancelled`` / ``failed`` / ``interrupted`` with the
    curve so far. ``run_id``: continue a run already recorded (``FinetuneJob``
    records it before starting the training process). ``split``: "random" or "grouped", as for top-tuning
    (``data.split``). ``hyper``: any ``FINETUNE_DEFAULTS`` setting.
    """
    from toptune_core.experiment import record_end, run_experiment

    store = store or RunStore()
    try:
        tuner = make_finetuner(backbone, seed, **hyper)
    except BaseException as e:  # a cancel or stop (SIGTERM) can arrive this early too
        if run_id is not None:
            record_end(store, run_id, e, [])
        raise
    return run_experiment(tuner, data, test_data=test_data, seed=seed, test_size=test_size, split=split, store=store,
                          progress=progress, should_cancel=should_cancel, run_id=run_id)


def load_finetuned(store: RunStore, run: RunRecord, *, device: Optional[str] = None) -> FineTuner:
    """The fine-tuned model of a completed run, from that run's own (checksummed) files in the store."""
    return FineTuner.from_run(store, run, device=device)
