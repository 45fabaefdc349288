"""The comparison fine-tune: the same backbone, a new head, trained end to end, on the same split.

* ``recipe``: the recipe in words; ``defaults``: ``FINETUNE_DEFAULTS`` (read from ``FineTuner``'s signature);
* ``schedule``: AdamW and the per-step warm-up + cosine schedule (timm's factories), fitted to the budget;
* ``callbacks``: cancel, time budget, best weights, early stopping, progress (``TrainProgress``);
* ``loop``: the training loop;
* ``run``: ``run_finetuning`` (the recorded pipeline) and ``load_finetuned`` (what "Classify a photo" uses).

The estimator itself is ``toptune_core.methods.finetuner.FineTuner``. The names
below are importable from this package; they load on first use, so importing
the package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "FINETUNE_DEFAULTS": "toptune_core.finetune.defaults",
    "FINETUNE_RECIPE": "toptune_core.finetune.recipe",
    "FineTuner": "toptune_core.methods.finetuner",
    "WEIGHTS_FILE": "toptune_core.methods.finetuner",
    "CONFIG_FILE": "toptune_core.methods.finetuner",
    "jsonable": "toptune_core.methods.finetuner",
    "TrainProgress": "toptune_core.finetune.callbacks",
    "run_finetuning": "toptune_core.finetune.run",
    "load_finetuned": "toptune_core.finetune.run",
}

__all__ = sorted(_NAMES) + ["_jsonable"]


def __getattr__(name: str) -> Any:
    if name == "_jsonable":  # the old private name, still used by jobs/process.py
        name = "jsonable"
    if name not in _NAMES:
        raise AttributeError(f"module 'toptune_core.finetune' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
