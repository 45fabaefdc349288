"""The fine-tune's recipe in plain words (``FINETUNE_RECIPE``, recorded with every fine-tune by ``FineTuner``); its
numbers are ``FINETUNE_DEFAULTS`` (``finetune.defaults``).

Top-tuning's claim ("comparable accuracy at a fraction of the training time")
is only as honest as the fine-tune it is compared with, so this is the
fine-tune a careful practitioner would run, in the spirit of fastai's
``fine_tune`` and the Eden Library notebooks. The numbers are written once,
in ``FineTuner.__init__``'s signature (``methods.finetuner``);
``finetune.defaults`` reads ``FINETUNE_DEFAULTS`` from it, in its order, for the dashboard, the
command line and the run record:

* epochs 3 (full fine-tuning, after) head_epochs 1 (head only, backbone and its
  batch-norm statistics frozen); batch_size 32;
* lr 5e-4 (full) and head_lr 2e-3 (head only): peak learning rates;
  weight_decay 0.05 (AdamW's, not on biases and norms); label_smoothing 0.1;
  warmup_fraction 0.1 of each phase's steps; cosine down to min_lr_ratio 0.01;
* crop_scale (0.35, 1.0) of the photo's area and flips (leaves have no up or down);
* freeze_blocks None (every block trains; N: only the last N and the head);
* budget_seconds 900 (None: no limit); val_fraction 0.15 of the training
  photos picks the best epoch; patience 3 full epochs;
* device None (CUDA if present, else the CPU), num_threads None (the thread
  policy's choice: one per available CPU), channels_last, mixed_precision (CUDA
  only: bf16 where supported, else fp16 with loss scaling), decode_workers 1
  (threads decoding photos while the model trains), seed 0;
* test_views: the views each held-out photo is scored with, averaged: the
  top-tuning's default view set (``features.views.DEFAULT_VIEWS``), so both
  methods answer from the same views.
"""

from __future__ import annotations

#: The recipe in plain words, for the dashboard and the README.
FINETUNE_RECIPE: dict[str, str] = {
    "optimizer": "AdamW; no weight decay on biases and normalisation layers",
    "schedule": "per phase: linear warm-up, then cosine decay to 1% of the peak, updated every step",
    "phases": "head only (backbone and its batch-norm statistics frozen), then the whole network "
              "(or its last N blocks)",
    "loss": "cross-entropy with label smoothing",
    "augmentation": "training photos only: random resized crop at the model's input size, horizontal and "
                    "vertical flips",
    "evaluation preprocessing": "timm's resolved evaluation transform (resize, centre crop, normalise), the "
                                "same as feature extraction",
    "early stopping": "on a stratified validation part carved from the training photos; the best epoch's "
                      "weights are kept; held-out photos are scored once, at the end",
    "hardware": "CUDA with channels-last and mixed precision when present; otherwise the CPU with one "
                "torch thread per available CPU",
}
