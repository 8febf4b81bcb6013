"""Optimizers and learning-rate schedules of the three protocols (`fusion.protocols`).

* `clean` (this harness's choice, not the paper's nor the authors'): AdamW in four groups,
  {SSM block, rest} x {decay, no decay}; the SSM block (mixers and `A_log`) learns at a higher
  peak LR, and 1-D parameters, biases, `A_log` and `D` are not decayed (usual AdamW practice:
  decay would shrink `A_log` towards 0, i.e. every state towards A = -1, and `D` towards 0).
  Schedule `warmup_cosine`: each group warms up linearly to its own peak, then half-cosine.
* `authors` (`Dongzhikang/MambaVL` @ 601b789d48acdf34ada50e9b4f78f219ffc470dc):
  `slowfast/models/optimizer.py` puts parameters whose name contains "mamba" (the two mixers)
  in a group at MAMBA_BASE_LR and the rest, `A_log` included, at BASE_LR, with the same L2
  weight decay on all of them (ZERO_WD_1D_PARAM False; `_no_weight_decay` is never read); SGD
  with momentum 0.9, Nesterov, dampening 0 (`slowfast/config/defaults.py`). Schedule
  `authors_lr`: `slowfast/utils/lr_policy.py` evaluated at every iteration
  (`tools/train_net.py`: epoch + iteration / iterations per epoch).
  The paper's text names none of these (only warmup, cosine and a higher Mamba peak LR).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", ".D", "bias")


SGD_MOMENTUM = 0.9  # the authors' SOLVER.MOMENTUM, with NESTEROV True and DAMPENING 0


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
    decay_exclusions: bool = True,
    a_log_lr: str = "ssm",
) -> list[dict]:
    """Up to four groups: {SSM block, rest} x {decay, no decay}. Empty groups are dropped.

    `decay_exclusions=False` decays every parameter (the authors'); `a_log_lr="base"` puts
    `A_log` in the rest's LR group even when `ssm_prefixes` names it (the authors' name rule).
    """
    ssm_prefixes = tuple(ssm_prefixes)
    if a_log_lr not in ("ssm", "base"):
        raise ValueError(f"a_log_lr must be 'ssm' or 'base', not {a_log_lr!r}")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            ssm = _is_ssm(name, ssm_prefixes) and not (a_log_lr == "base" and name == "A_log")
            key = (ssm, decay_exclusions and _is_no_decay(name, param))
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


def build_optimizer(groups: list[dict], name: str, fused: bool = False,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.999) or the authors' SGD (momentum 0.9, Nesterov, dampening 0)
    over `param_groups`; weight decay is each group's own (decoupled in AdamW, L2 in SGD)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), fused=fused, capturable=capturable)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=SGD_MOMENTUM,
                               dampening=0.0, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw or sgd")


def authors_lr(epoch: float, group_lr: float, base_lr: float, start_lr: float, end_lr: float,
               warmup_epochs: float, max_epoch: float) -> float:
    """The authors' LR of a group at fractional `epoch` (their `lr_policy.get_lr_at_epoch`
    with LR_POLICY cosine and COSINE_AFTER_WARMUP False).

    Cosine from epoch 0 (not from the warmup's end) from the group's own LR to `end_lr` at
    `max_epoch`. During warmup every group ramps linearly from `start_lr` to the cosine value
    at `warmup_epochs` computed with `base_lr`, not with the group's LR (`lr_func_cosine` is
    called there without `base_lr`), so a group with a higher LR (the Mamba group) reaches
    only about `base_lr` and jumps to its own cosine curve when warmup ends.
    """
    def cosine(at: float, peak: float) -> float:
        return end_lr + (peak - end_lr) * (math.cos(math.pi * at / max_epoch) + 1.0) * 0.5

    if epoch < warmup_epochs:
        return epoch * (cosine(warmup_epochs, base_lr) - start_lr) / warmup_epochs + start_lr
    return cosine(epoch, group_lr)


def build_authors_scheduler(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: float,
    warmup_epochs: float,
    start_lr: float,
    base_lr: float,
    end_lr: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """`authors_lr` at every iteration: step k trains at epoch k / steps_per_epoch, as the
    authors' loop sets the LR before each step. Each group's `initial_lr` is its own LR."""
    if end_lr >= base_lr:  # their lr_func_cosine asserts COSINE_END_LR < base_lr
        raise ValueError(f"final LR {end_lr} must be below the base LR {base_lr}")

    def factor_for(group_lr: float):
        def factor(step: int) -> float:
            return authors_lr(step / steps_per_epoch, group_lr, base_lr, start_lr, end_lr,
                              warmup_epochs, epochs) / group_lr
        return factor

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])
