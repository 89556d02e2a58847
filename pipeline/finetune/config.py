"""A fine-tuning run's settings; imports no torch, so the CLI shows their defaults for free."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.settings import Settings, setting


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    KIND = "finetune setting"

    steps: int = setting(500, 1)
    batch_size: int = setting(64, 2)  # contrastive: a second item at least
    lr: float = setting(1e-5, 0, open_low=True)  # fine-tuning, not pretraining: open_clip_train's usual scale
    weight_decay: float = setting(0.1, 0)
    warmup_steps: int = setting(50, 0)
    grad_clip: float = setting(1.0, 0, open_low=True)
    blocks: int = setting(0, 0)  # train only the last N blocks of each tower (and what follows them); 0: all
    hard_negatives: bool = False  # NegCLIP: the dataset's negative captions and images as extra candidates
    checkpoint_every: int = setting(100, 1)
    seed: int = setting(0, 0)
