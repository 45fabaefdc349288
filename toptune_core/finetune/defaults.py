"""``FINETUNE_DEFAULTS``: the fine-tune's numbers, read from ``FineTuner``'s constructor (``methods.finetuner``), so
they are written once; the recipe in words is ``finetune.recipe``."""

from __future__ import annotations

import inspect
from typing import Any

from toptune_core.methods.finetuner import FineTuner


def finetune_defaults() -> dict[str, Any]:
    """``FineTuner``'s constructor defaults, in its signature's order (``None``: chosen automatically)."""
    sig = inspect.signature(FineTuner.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


#: Every default hyper-parameter of ``FineTuner`` (its constructor's defaults), for display in the UI.
FINETUNE_DEFAULTS: dict[str, Any] = finetune_defaults()
