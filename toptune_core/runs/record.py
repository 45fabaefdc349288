"""One recorded run as read from the store: its method, settings, split, metrics, timings, curve and files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional


from toptune_core.errors import ToptuneError

if TYPE_CHECKING:  # pandas loads only where predictions are read or written (a prediction needs none)
    import pandas as pd

STATUSES = ("running", "completed", "cancelled", "failed", "interrupted")


@dataclass
class RunRecord:
    """One recorded run, as read from the store."""

    id: str
    created: float
    finished: Optional[float]
    method: str  # "toptune" or "finetune"
    status: str
    backbone: str
    classifier: Optional[str]
    dataset: str
    params: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)
    error: Optional[str] = None
    pid: Optional[int] = None
    host: Optional[str] = None
    proc_start: Optional[str] = None  # identifies the process beyond its pid (boot id + start time)
    model_sha256: Optional[str] = None  # JSON {file: SHA-256} of the model files, checked by RunStore.model_file
    dir: Path = Path()

    @property
    def accuracy(self) -> Optional[float]:
        return self.metrics.get("accuracy")

    @property
    def label(self) -> str:
        """A short human label, e.g. ``20261124-2231-ab12 · top-tune rf · tf_efficientnet_lite0 · acc 0.92``."""
        how = f"top-tune {self.classifier}" if self.method == "toptune" else "fine-tune"
        acc = f" · acc {self.accuracy:.3f}" if self.accuracy is not None else ""
        return f"{self.id} · {how} · {self.backbone}{acc}"

    def predictions(self) -> "pd.DataFrame":
        """Per-image held-out predictions (path, true, predicted, confidence, correct, p_<class>...)."""
        path = self.dir / "predictions.csv"
        if not path.exists():
            raise ToptuneError(f"Run {self.id} has no saved predictions (status: {self.status}).")
        import pandas as pd

        return pd.read_csv(path)
