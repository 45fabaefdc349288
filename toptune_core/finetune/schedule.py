"""The fine-tune's optimizer and learning-rate schedule, and re-planning them to fit the time budget.

Built with timm's own factories: ``timm.optim.create_optimizer_v2`` (AdamW;
``filter_bias_and_bn`` keeps weight decay off biases and normalisation
layers, and only parameters that train are handed over) and
``timm.scheduler.CosineLRScheduler`` stepped every step (``step_update``).
Each phase (head only, then the whole network) gets a fresh optimizer and
its own schedule: a linear warm-up over ``warmup_fraction`` of the phase's
steps, then a cosine decay that reaches ``min_lr_ratio`` of the peak at the
phase's last step.

When the planned epochs cannot finish inside the budget, ``replan_to_budget``
(the one place that does it) shortens the phase and the cosine follows.
"""

from __future__ import annotations

import time
from typing import Optional


class PhaseSchedule:
    """AdamW plus a per-step warm-up + cosine schedule for one phase of ``total_steps`` steps."""

    def __init__(self, model, *, peak_lr: float, weight_decay: float, warmup_fraction: float,
                 min_lr_ratio: float, total_steps: int):
        from timm.optim import create_optimizer_v2

        self.peak_lr, self.warmup_fraction, self.min_lr_ratio = peak_lr, warmup_fraction, min_lr_ratio
        # Parameters that do not train (requires_grad False) are left out by timm's grouping.
        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=peak_lr, weight_decay=weight_decay,
                                             filter_bias_and_bn=True)
        self.total_steps = 0
        self.scheduler = None
        self.replan(total_steps)

    def replan(self, total_steps: int) -> None:
        """(Re)build the schedule for a phase of ``total_steps`` steps; steps already taken keep their place."""
        from timm.scheduler import CosineLRScheduler

        total = max(1, int(total_steps))
        if total == self.total_steps:
            return
        self.total_steps = total
        warm = max(1, round(self.warmup_fraction * total)) if self.warmup_fraction > 0 else 0
        warm = min(warm, total - 1) if total > 1 else 0
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=max(1, total - warm), lr_min=self.peak_lr * self.min_lr_ratio,
            warmup_t=warm, warmup_lr_init=self.peak_lr / warm if warm else 0.0, warmup_prefix=True,
            cycle_limit=1, t_in_epochs=False)

    def lr_for_step(self, step: int) -> float:
        """Set the learning rate of the phase's ``step``-th update (0-based) and return it."""
        self.scheduler.step_update(step)
        return float(self.optimizer.param_groups[0]["lr"])


def budget_epochs(planned: int, epoch_in_phase: int, epoch_seconds: float, left_seconds: float,
                  mid_epoch: bool) -> int:
    """How many epochs this phase may plan so that they end inside the budget (never more than ``planned``).

    ``mid_epoch``: ``left_seconds`` counts from the start of the current epoch, which then counts as one to
    fit (at least it); otherwise the current epoch is done and only the ones after it must fit.
    """
    if mid_epoch:
        return min(planned, epoch_in_phase - 1 + max(1, int(left_seconds // epoch_seconds)))
    return min(planned, epoch_in_phase + max(0, int(left_seconds // epoch_seconds)))


def replan_to_budget(state, epoch_seconds: float, epoch_start: Optional[float] = None) -> None:
    """Shrink the current phase's planned epochs when they cannot finish inside the budget; the cosine follows.

    ``state`` is the loop's ``TrainState``. ``epoch_start``: for a mid-epoch estimate, when the current
    epoch (as if its first step had been typical) started; None at the end of an epoch.
    """
    if state.budget is None or epoch_seconds <= 0:
        return
    phase = state.phase
    if epoch_start is not None:
        left = state.budget - (epoch_start - state.start)
    else:
        left = state.budget - (time.perf_counter() - state.start)
    state.planned[phase] = budget_epochs(state.planned[phase], state.epoch_in_phase, epoch_seconds, left,
                                         mid_epoch=epoch_start is not None)
    if state.schedule is not None:
        state.schedule.replan(state.planned[phase] * state.steps)
