"""The paper's optimisation recipe: AdamW groups and a warmup + half-cosine schedule.

Two things matter for the shared-A fusion: the selective-SSM block learns at a higher peak
learning rate than the projections and classifiers, and the SSM's `A_log` and `D` (like
biases and norm weights) are never weight-decayed, since decay would pull the state
dynamics towards `A = -1` and the skip connection to zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", ".D", "bias")


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name == "D" or any(name.endswith(n) for n in NO_DECAY_NAMES)


def _is_ssm(name: str, ssm_prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in ssm_prefixes)


def param_groups(
    model: nn.Module,
    peak_lr: float,
    ssm_peak_lr: float,
    weight_decay: float,
    ssm_prefixes: Iterable[str] = (),
) -> list[dict]:
    """Four AdamW groups: {SSM block, rest} x {decay, no decay}. Empty groups are dropped."""
    ssm_prefixes = tuple(ssm_prefixes)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (_is_ssm(name, ssm_prefixes), _is_no_decay(name, param))
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": ssm_peak_lr if ssm else peak_lr,
            "peak_lr": ssm_peak_lr if ssm else peak_lr,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{'ssm' if ssm else 'rest'}{'-no_decay' if no_decay else ''}",
        }
        for (ssm, no_decay), params in sorted(groups.items())
    ]


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, start: float, peak: float, final: float
) -> float:
    """Learning rate at `step`: linear start→peak over warmup, then half-cosine peak→final."""
    if warmup_steps > 0 and step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    start_factor: float,
    final_factor: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-group schedule: every group follows warmup_cosine scaled to its own peak LR.

    `start_factor`/`final_factor` are the start and final LRs as fractions of each peak.
    """

    def factor(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, start_factor, 1.0, final_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
