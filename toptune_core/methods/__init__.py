"""The training methods, as estimators: ``TopTuner`` (top-tuning) and ``FineTuner`` (fine-tuning).

``method_class(name)`` looks a method up by the name runs record ("toptune",
"finetune"), importing only that method's module.
"""

from __future__ import annotations

import importlib

_METHODS = {"toptune": ("toptune_core.methods.toptuner", "TopTuner"),
            "finetune": ("toptune_core.methods.finetuner", "FineTuner")}


def method_class(name: str):
    """The estimator class of method ``name``."""
    module, cls = _METHODS[name]
    return getattr(importlib.import_module(module), cls)
