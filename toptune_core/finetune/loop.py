"""The fine-tune's training loop: phases, epochs, steps and validation, calling the callbacks.

``train`` runs the phases (head only, then the whole network or its last N
blocks) on the photos of ``TrainSetup``; each phase gets its trainable
parameters (``configure_trainable``), a fresh optimizer and schedule
(``finetune.schedule``), and epochs of shuffled, augmented batches decoded
ahead in threads (``features.reader.read_ahead``). After each epoch the
validation photos are scored (``predict_batches``, also what prediction
uses) and a curve entry is written. What to stop, keep and report is the
callbacks' business (``finetune.callbacks``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from toptune_core.backbones.pixels import PixelPipeline
from toptune_core.errors import ImageError, ToptuneError
from toptune_core.features.reader import chunked, read_ahead
from toptune_core.features.views import average as average_views, cut as cut_views, n_views as n_views_of
from toptune_core.finetune.callbacks import Callbacks, TrainState
from toptune_core.finetune.schedule import PhaseSchedule


@dataclass
class TrainSetup:
    """What the loop trains: the model on its device, the photos and the settings (a ``FineTuner``)."""

    model: Any
    device: Any  # torch.device
    amp_dtype: Any  # torch.dtype for mixed precision, or None
    pipeline: PixelPipeline
    paths: list[str]
    labels: np.ndarray
    fit_idx: np.ndarray  # photos that train
    val_idx: np.ndarray  # photos that pick the best epoch
    params: Any  # the FineTuner: batch size, epochs, learning rates, augmentation, ...
    criterion: Any = None  # set by ``train``: cross-entropy with label smoothing
    scaler: Any = None  # set by ``train``: fp16 loss scaling on CUDA, else None


def layer_groups(model) -> tuple[list[list[str]], list[str]]:
    """The backbone's parameter names in blocks (input to output), and the classifier's parameter names.

    Uses timm's own grouping (``group_matcher``, fine-grained: one group per
    block; the stem is the first group, the last block carries the final
    convolution); models without one fall back to their top-level modules.
    """
    clf = model.get_classifier()
    clf_prefix = next(name for name, mod in model.named_modules() if mod is clf)
    head = [n for n, _ in model.named_parameters() if n == clf_prefix or n.startswith(clf_prefix + ".")]
    try:
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=False))
        groups = [list(names) for _, names in sorted(grouped.items())]
    except Exception:
        groups = []
        for child, mod in model.named_children():
            names = [f"{child}.{n}" for n, _ in mod.named_parameters()]
            if names:
                groups.append(names)
    head_set = set(head)
    groups = [[n for n in g if n not in head_set] for g in groups]
    return [g for g in groups if g], head


def configure_trainable(model, phase: str, freeze_blocks: Optional[int]) -> None:
    """Set requires_grad for the phase: the head only, every block, or the last ``freeze_blocks`` blocks."""
    groups, head_names = layer_groups(model)
    if phase == "head":
        trainable = set(head_names)
    elif freeze_blocks is None:
        trainable = {n for n, _ in model.named_parameters()}
    else:
        last = groups[max(0, len(groups) - freeze_blocks):] if freeze_blocks else []
        trainable = set(head_names) | {n for g in last for n in g}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


def set_modes(model) -> None:
    """Train mode, except batch norms whose parameters are frozen: they keep their ImageNet statistics."""
    import torch

    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def load_pixels(pipeline: PixelPipeline, sources: Sequence, idx: Sequence[int],
                load: Optional[Callable[[int], np.ndarray]] = None) -> np.ndarray:
    """(n, H, W, 3) uint8 pixels of ``sources[idx]`` (eval pixels unless ``load``); ImageError if one fails."""
    batch = pipeline.load_batch(sources, idx, load)
    if batch.errors:
        raise ImageError(batch.errors[0][1])
    return batch.pixels


def predict_batches(model, sources: Sequence, pipeline: PixelPipeline, device, amp_dtype, *, batch_size: int,
                    workers: int, channels_last: bool, check: Optional[Callable[[], None]] = None,
                    on_batch: Optional[Callable[[int], None]] = None, embed: bool = False,
                    views: str = "1") -> list[np.ndarray]:
    """Class probabilities (float64) per batch of ``sources``, through timm's evaluation pixels, averaged over
    each photo's ``views`` (``features.views``); with ``embed``, the network's penultimate features of every view
    (float32, (n, n_views, dim): what its classifier sees) instead."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            done = 0
            for idx, px in read_ahead(chunked(range(len(sources)), batch_size),
                                      lambda c: load_pixels(pipeline, sources, c), workers, "finetune-decode"):
                if check is not None:
                    check()
                n_views = n_views_of(views)
                x = pipeline.to_tensor(np.ascontiguousarray(cut_views(px, views)), device, channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    if embed:
                        f = model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy()
                        out.append(f.reshape(len(px), n_views, f.shape[-1]))
                    else:
                        proba = torch.softmax(model(x).float(), dim=1).cpu().numpy().astype(np.float64)
                        out.append(average_views(proba, n_views))
                done += len(idx)
                if on_batch is not None:
                    on_batch(done)
    finally:
        model.train(was_training)
    return out


def train(setup: TrainSetup, callbacks: Callbacks, on_epoch: Optional[Callable[[dict], None]] = None,
          check: Optional[Callable[[], None]] = None) -> tuple[TrainState, list[dict]]:
    """Run every phase; returns the final state and the curve (one entry per epoch)."""
    import torch

    p = setup.params
    setup.criterion = torch.nn.CrossEntropyLoss(label_smoothing=p.label_smoothing)
    setup.scaler = torch.amp.GradScaler("cuda") if setup.amp_dtype == torch.float16 else None
    n_fit = len(setup.fit_idx)
    bs = min(p.batch_size, n_fit)
    drop_last = n_fit >= 2 * bs
    phases = {ph: n for ph, n in (("head", p.head_epochs), ("full", p.epochs)) if n > 0}
    state = TrainState(start=time.perf_counter(), phases=list(phases), planned=dict(phases),
                       steps=n_fit // bs if drop_last else math.ceil(n_fit / bs), batch_size=bs,
                       n_val=len(setup.val_idx), budget=p.budget_seconds)
    curve: list[dict] = []
    try:
        callbacks.fire("on_fit_start", state, setup.model)
        for phase in state.phases:
            if state.stop:
                break
            _run_phase(setup, state, callbacks, phase, curve, on_epoch, check)
        callbacks.fire("on_fit_end", state, setup.model)
    finally:
        callbacks.close()
    setup.model.eval()
    return state, curve


def _run_phase(setup: TrainSetup, state: TrainState, callbacks: Callbacks, phase: str, curve: list[dict],
               on_epoch, check) -> None:
    p = setup.params
    configure_trainable(setup.model, phase, p.freeze_blocks)
    state.phase, state.epoch_in_phase, state.phase_step = phase, 0, 0
    state.schedule = PhaseSchedule(setup.model, peak_lr=p.head_lr if phase == "head" else p.lr,
                                   weight_decay=p.weight_decay, warmup_fraction=p.warmup_fraction,
                                   min_lr_ratio=p.min_lr_ratio, total_steps=state.planned[phase] * state.steps)
    while state.epoch_in_phase < state.planned[phase] and not state.stop:
        callbacks.fire("before_epoch", state)
        if state.stop:
            break
        state.epoch_in_phase += 1
        state.epoch_no += 1
        _run_epoch(setup, state, callbacks)
        if state.seen == 0:  # stopped before its first step: the epoch did not happen
            state.epoch_no -= 1
            break
        entry = _validate(setup, state, callbacks, check)
        curve.append(entry)
        if on_epoch:
            on_epoch(dict(entry))
        callbacks.fire("on_epoch_end", state, entry)


def _epoch_order(setup: TrainSetup, state: TrainState) -> np.ndarray:
    rng = np.random.default_rng([setup.params.seed, state.epoch_no])
    order = setup.fit_idx[rng.permutation(len(setup.fit_idx))]
    return order[:state.steps * state.batch_size] if len(setup.fit_idx) >= 2 * state.batch_size else order


def _run_epoch(setup: TrainSetup, state: TrainState, callbacks: Callbacks) -> None:
    p = setup.params
    state.epoch_start = time.perf_counter()
    state.step, state.loss_sum, state.correct, state.seen, state.partial = 0, 0.0, 0, 0, False
    state.val_accuracy = state.val_loss = None
    set_modes(setup.model)
    epoch = state.epoch_no

    def load_train(i: int) -> np.ndarray:
        r = np.random.default_rng([p.seed, epoch, int(i)])
        return setup.pipeline.train_pixels(setup.paths[i], r, p.crop_scale, p.flips)

    callbacks.fire("on_epoch_start", state)
    batches = read_ahead(chunked(_epoch_order(setup, state), state.batch_size),
                         lambda c: load_pixels(setup.pipeline, setup.paths, c, load_train), p.decode_workers,
                         "finetune-decode")
    for idx, px in batches:
        callbacks.fire("before_step", state)
        if state.stop:
            break
        t0 = time.perf_counter()
        _train_step(setup, state, idx, px)
        state.step_seconds[state.phase] += time.perf_counter() - t0
        if state.step == 1:
            state.after_first_step = time.perf_counter()
        callbacks.fire("after_step", state)


def _train_step(setup: TrainSetup, state: TrainState, idx: list[int], px: np.ndarray) -> None:
    """One optimizer step on one batch; raises a ToptuneError if the loss is no longer a number."""
    import torch

    model, device, amp = setup.model, setup.device, setup.amp_dtype
    optimizer, criterion, scaler = state.schedule.optimizer, setup.criterion, setup.scaler
    state.lr = state.schedule.lr_for_step(state.phase_step)
    x = setup.pipeline.to_tensor(px, device, setup.params.channels_last)
    y = torch.as_tensor(setup.labels[idx], device=device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise ToptuneError(f"Fine-tuning diverged (the loss became {loss_value}) in epoch {state.epoch_no}; "
                           "try a lower learning rate.")
    n = len(idx)
    state.phase_step += 1
    state.step += 1
    state.loss_sum += loss_value * n
    state.correct += int((logits.detach().argmax(1) == y).sum())
    state.seen += n
    state.images_done += n
    state.images_phase[state.phase] += n


def _validate(setup: TrainSetup, state: TrainState, callbacks: Callbacks, check) -> dict:
    """Score the validation photos, let the callbacks judge the epoch, and return its curve entry."""
    p = setup.params
    state.val_start = time.perf_counter()
    if state.n_val:
        callbacks.fire("on_validate", state)
        proba = np.concatenate(predict_batches(
            setup.model, [setup.paths[i] for i in setup.val_idx], setup.pipeline, setup.device, setup.amp_dtype,
            batch_size=max(1, 2 * p.batch_size), workers=p.decode_workers, channels_last=p.channels_last,
            check=check))
        y_val = setup.labels[setup.val_idx]
        state.val_accuracy = float((proba.argmax(1) == y_val).mean())
        state.val_loss = float(-np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
        state.last_val_acc = state.val_accuracy
    now = time.perf_counter()
    state.val_seconds += now - state.val_start
    callbacks.fire("on_validated", state, setup.model)
    epoch_seconds = now - state.epoch_start
    return {"epoch": state.epoch_no, "phase": state.phase, "train_loss": state.loss_sum / state.seen,
            "train_accuracy": state.correct / state.seen, "val_loss": state.val_loss,
            "val_accuracy": state.val_accuracy, "lr": state.lr, "elapsed": state.elapsed(),
            "epoch_seconds": epoch_seconds,
            "images_per_second": state.seen / max(1e-9, state.val_start - state.epoch_start),
            "best": state.is_best, "partial": state.partial}
