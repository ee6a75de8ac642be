"""The optimiser and learning-rate schedule every stage uses: AdamW, linear warm-up, then constant or cosine."""

from __future__ import annotations

import math

import torch

from generator.train.config import CommonConfig


def lr_lambda(config: CommonConfig):
    """Linear warm-up, then constant or cosine decay to `lr_min_ratio` of the peak."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return config.lr_min_ratio + (1 - config.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    if config.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be constant or cosine, got {config.lr_schedule!r}")
    return factor


def make_optimizer(parameters, config: CommonConfig, lr: float | None = None):
    """AdamW with the config's warm-up and decay; returns (optimizer, lr scheduler)."""
    optimizer = torch.optim.AdamW(parameters, lr=lr or config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
