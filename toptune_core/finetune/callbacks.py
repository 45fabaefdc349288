"""Callbacks of the fine-tune loop (in the style of Lightning's and fastai's): the loop trains; these decide.

The loop (``finetune.loop``) keeps a ``TrainState`` and calls every callback
at fixed points: ``on_fit_start``, ``before_epoch`` (may stop), ``on_epoch_start``,
``before_step`` (may stop), ``after_step``, ``on_validate``, ``on_validated``
(the epoch's score is known), ``on_epoch_end`` (its curve entry is written),
``on_fit_end`` and ``close`` (always, also on errors). Each callback owns one
concern:

* ``CancelWatch``: asks ``should_cancel`` between steps and, through hooks,
  inside every block of the forward and backward passes (a fraction of a second);
* ``TimeBudget``: stops at the wall-clock budget and re-plans the schedule to fit it;
* ``BestWeights``: keeps the best epoch's weights (validation accuracy, then loss)
  and puts them back at the end;
* ``EarlyStopping``: stops after ``patience`` full epochs without a better score;
* ``ProgressReporter``: the progress events (``TrainProgress``), all built by ``train_event``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from toptune_core.errors import Cancelled
from toptune_core.finetune.schedule import replan_to_budget
from toptune_core.progress import CancelCheck, Progress, ProgressCallback

PHASE_WORDS = {"head": "head only", "full": "fine-tuning"}


@dataclass(frozen=True)
class TrainProgress(Progress):
    """A training progress event: a ``Progress`` plus the epoch, phase, loss and last validation score."""

    epoch: int = 0  # 1-based; counts head and full epochs together
    epochs: int = 0  # planned epochs in all (may shrink to fit the budget)
    phase: str = ""  # "head" or "full"
    step: int = 0  # step within the epoch
    steps: int = 0  # steps per epoch
    loss: Optional[float] = None  # running mean training loss of the epoch
    val_accuracy: Optional[float] = None  # of the last finished epoch
    epoch_end: bool = False


@dataclass
class TrainState:
    """Where the training stands; the loop writes it, callbacks read it (and may ask it to stop)."""

    start: float
    phases: list[str]
    planned: dict[str, int]  # epochs per phase (may shrink to fit the budget)
    steps: int  # steps per epoch
    batch_size: int
    n_val: int
    budget: Optional[float]
    epoch_no: int = 0  # epochs begun, head and full together
    phase: str = ""
    epoch_in_phase: int = 0
    phase_step: int = 0  # optimizer steps taken in this phase
    step: int = 0  # steps done in this epoch
    images_done: int = 0
    images_phase: dict[str, int] = field(default_factory=lambda: {"head": 0, "full": 0})
    step_seconds: dict[str, float] = field(default_factory=lambda: {"head": 0.0, "full": 0.0})
    val_seconds: float = 0.0
    epoch_start: float = 0.0
    after_first_step: float = 0.0
    val_start: float = 0.0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    lr: float = 0.0
    partial: bool = False
    val_accuracy: Optional[float] = None  # of this epoch, once validated
    val_loss: Optional[float] = None
    last_val_acc: Optional[float] = None
    is_best: bool = False
    best_epoch: Optional[int] = None
    stop: bool = False
    stop_reason: str = "finished the planned epochs"
    schedule: Any = None  # the phase's PhaseSchedule

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def total_epochs(self) -> int:
        return sum(self.planned.values())

    def request_stop(self, reason: str) -> None:
        if not self.stop:
            self.stop, self.stop_reason = True, reason


class Callback:
    """Does nothing at every point of the loop; subclasses override what they need."""

    def on_fit_start(self, state: TrainState, model) -> None: ...
    def before_epoch(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def before_step(self, state: TrainState) -> None: ...
    def after_step(self, state: TrainState) -> None: ...
    def on_validate(self, state: TrainState) -> None: ...
    def on_validated(self, state: TrainState, model) -> None: ...
    def on_epoch_end(self, state: TrainState, entry: dict) -> None: ...
    def on_fit_end(self, state: TrainState, model) -> None: ...
    def close(self) -> None: ...


class Callbacks:
    """A list of callbacks called in order: ``callbacks.fire("before_step", state)``."""

    def __init__(self, callbacks: list[Callback]):
        self.items = list(callbacks)

    def fire(self, hook: str, *args) -> None:
        for cb in self.items:
            getattr(cb, hook)(*args)

    def close(self) -> None:
        for cb in self.items:
            cb.close()


class CancelWatch(Callback):
    """Asks ``should_cancel`` at most every ``interval`` seconds; raises ``Cancelled`` when it says yes.

    Checked before every step and batch, and from hooks inside the model's
    forward and backward passes, so a cancel takes effect within one block's
    computation, not one step's.
    """

    def __init__(self, should_cancel: Optional[CancelCheck], interval: float = 0.1):
        self.should_cancel, self.interval = should_cancel, interval
        self._last = 0.0
        self._hooks: list = []

    def check(self, force: bool = False) -> None:
        if self.should_cancel is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            if self.should_cancel():
                raise Cancelled("Fine-tuning was cancelled.")

    def on_fit_start(self, state: TrainState, model) -> None:
        self.install(model)

    def before_step(self, state: TrainState) -> None:
        self.check(force=True)

    def install(self, model) -> None:
        """Cancel checks inside the forward pass (each block) and the backward pass (each block's output grad)."""
        if self.should_cancel is None:
            return
        import torch

        blocks = getattr(model, "blocks", None)
        modules = [b for stage in blocks for b in (stage if isinstance(stage, torch.nn.Sequential) else [stage])] \
            if isinstance(blocks, torch.nn.Sequential) else [m for _, m in model.named_children()]

        def grad_hook(grad):
            self.check()
            return None

        def forward_hook(module, inputs, output):
            self.check()
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(grad_hook)

        self._hooks = [m.register_forward_hook(forward_hook) for m in modules]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


class TimeBudget(Callback):
    """Stops at the budget (checked between steps; at least one step is always taken) and re-plans the
    phase's epochs to end inside it: early in the first full epoch (from steps 2-4) and after every epoch."""

    def _over(self, state: TrainState) -> bool:
        return state.budget is not None and state.images_done > 0 and state.elapsed() >= state.budget

    def before_epoch(self, state: TrainState) -> None:
        if self._over(state):
            state.request_stop("reached the time budget")

    def before_step(self, state: TrainState) -> None:
        if self._over(state):
            state.request_stop("reached the time budget")
            state.partial = True

    def _val_per_epoch(self, state: TrainState, epochs_validated: int) -> float:
        return state.val_seconds / max(1, epochs_validated) if state.n_val else 0.0

    def after_step(self, state: TrainState) -> None:
        if state.phase == "full" and state.epoch_in_phase == 1 and state.step == 4:
            # Early estimate of a full epoch from steps 2-4 (the first step of a phase also builds the
            # kernels, so it is not typical), to fit the cosine into the budget.
            per_step = (time.perf_counter() - state.after_first_step) / 3
            first = state.after_first_step - state.epoch_start
            replan_to_budget(state, per_step * state.steps + self._val_per_epoch(state, state.epoch_no - 1),
                             epoch_start=state.epoch_start + max(0.0, first - per_step))

    def on_epoch_end(self, state: TrainState, entry: dict) -> None:
        if state.stop:
            return
        typical = entry["epoch_seconds"]
        if state.step > 1:  # leave out the first step's one-off cost (kernel set-up)
            typical = ((state.val_start - state.after_first_step) / (state.step - 1) * state.steps
                       + (time.perf_counter() - state.val_start))
        replan_to_budget(state, typical)


class BestWeights(Callback):
    """Keeps a copy of the best epoch's weights (validation accuracy, then lower loss); restores it at the end."""

    def __init__(self):
        self.best_key, self.best_state = None, None

    def on_validated(self, state: TrainState, model) -> None:
        key = (state.val_accuracy, -state.val_loss) if state.val_accuracy is not None else None
        state.is_best = key is not None and (self.best_key is None or key > self.best_key)
        if state.is_best:
            self.best_key = key
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            state.best_epoch = state.epoch_no

    def on_fit_end(self, state: TrainState, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        else:
            state.best_epoch = state.epoch_no


class EarlyStopping(Callback):
    """Stops after ``patience`` full epochs in a row without a better validation score."""

    def __init__(self, patience: int):
        self.patience, self.since_best = patience, 0

    def on_validated(self, state: TrainState, model) -> None:
        if state.is_best:
            self.since_best = 0
        elif state.val_accuracy is not None and state.phase == "full":
            self.since_best += 1

    def on_epoch_end(self, state: TrainState, entry: dict) -> None:
        if state.phase == "full" and self.since_best >= self.patience:
            state.request_stop(f"early stopping (no better validation score in {self.patience} epochs)")


def train_event(state: Optional[TrainState], stage: str, done: float, total: Optional[float], message: str,
                unit: str = "images", **fields: Any) -> TrainProgress:
    """The one place a ``TrainProgress`` is built (``state`` None: before training starts)."""
    if state is None:
        return TrainProgress(stage, done, total, unit, message=message, **fields)
    defaults = dict(elapsed=state.elapsed(), epoch=state.epoch_no, epochs=state.total_epochs, phase=state.phase,
                    steps=state.steps, val_accuracy=state.last_val_acc)
    return TrainProgress(stage, done, total, unit, message=message, **{**defaults, **fields})


class ProgressReporter(Callback):
    """Progress events at the start of an epoch, after every step, before validating and at the epoch's end."""

    def __init__(self, progress: ProgressCallback):
        self.progress = progress

    def _rate(self, state: TrainState, phase: str) -> Optional[float]:
        if state.images_phase[phase] and state.step_seconds[phase] > 0:
            return state.images_phase[phase] / state.step_seconds[phase]
        if phase == "full" and state.images_phase["head"] and state.step_seconds["head"] > 0:
            # Until measured: a full step costs about five head-only steps (tf_efficientnet_lite0 on a CPU).
            return state.images_phase["head"] / state.step_seconds["head"] / 5
        return None

    def _eta(self, state: TrainState) -> Optional[float]:
        """Seconds left: this epoch's remaining steps, the phase's later epochs, later phases, validations."""
        left, later = 0.0, False
        val_each = state.val_seconds / max(1, state.epoch_no) if state.n_val else 0.0
        for p in state.phases:
            if p == state.phase:
                later = True
                imgs = ((state.planned[p] - state.epoch_in_phase) * state.steps + state.steps - state.step) \
                    * state.batch_size
                vals = state.planned[p] - state.epoch_in_phase + (1 if state.step < state.steps else 0)
            elif later:
                imgs, vals = state.planned[p] * state.steps * state.batch_size, state.planned[p]
            else:
                continue
            r = self._rate(state, p)
            if r is None:
                return None
            left += imgs / r + vals * val_each
        if state.budget is not None:
            left = min(left, max(0.0, state.budget - state.elapsed()))
        return left

    def _train(self, state: TrainState, message: str, **fields: Any) -> None:
        total = max(state.images_done, state.total_epochs * state.steps * state.batch_size)
        fields.setdefault("step", state.step)
        self.progress(train_event(state, "train", state.images_done, total, message,
                                  rate=self._rate(state, state.phase), eta=self._eta(state), **fields))

    def _epoch_words(self, state: TrainState) -> str:
        return f"epoch {state.epoch_no}/{state.total_epochs} ({PHASE_WORDS[state.phase]})"

    def on_epoch_start(self, state: TrainState) -> None:
        self._train(state, f"{self._epoch_words(state)} starting")

    def after_step(self, state: TrainState) -> None:
        loss = state.loss_sum / state.seen
        self._train(state, f"{self._epoch_words(state)}, step {state.step}/{state.steps}, loss {loss:.3f}",
                    loss=loss)

    def on_validate(self, state: TrainState) -> None:
        self.progress(train_event(state, "validate", 0, state.n_val,
                                  f"epoch {state.epoch_no}: scoring the validation photos", steps=0))

    def on_epoch_end(self, state: TrainState, entry: dict) -> None:
        val = state.val_accuracy
        self._train(state, f"epoch {state.epoch_no} done: loss {entry['train_loss']:.3f}"
                    + (f", validation accuracy {val:.3f}" if val is not None else ""),
                    loss=entry["train_loss"], val_accuracy=val, step=state.steps, epoch_end=True)
