from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fusion.optim import authors_lr, build_scheduler, param_groups, warmup_cosine


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.ssm = nn.Module()
        self.ssm.in_proj = nn.Linear(8, 8)
        self.A_log = nn.Parameter(torch.zeros(8, 4))
        self.ssm.D = nn.Parameter(torch.ones(8))
        self.head = nn.Linear(8, 3)


def test_groups_split_ssm_and_no_decay() -> None:
    groups = param_groups(Toy(), peak_lr=1e-4, ssm_peak_lr=1e-3, weight_decay=0.05,
                          ssm_prefixes=("ssm", "A_log"))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"rest", "rest-no_decay", "ssm", "ssm-no_decay"}
    assert by_name["ssm"]["lr"] == 1e-3 and by_name["rest"]["lr"] == 1e-4
    assert by_name["ssm-no_decay"]["weight_decay"] == 0.0 and by_name["ssm"]["weight_decay"] > 0
    no_decay_ssm = {p.shape for p in by_name["ssm-no_decay"]["params"]}
    assert torch.Size([8, 4]) in no_decay_ssm  # A_log is never decayed
    assert sum(len(g["params"]) for g in groups) == len(list(Toy().parameters()))


def test_warmup_then_half_cosine() -> None:
    values = [warmup_cosine(s, 100, 10, 1e-6, 1e-3, 1e-5) for s in range(101)]
    assert values[0] == pytest.approx(1e-6)
    assert values[10] == pytest.approx(1e-3)
    assert values[100] == pytest.approx(1e-5)
    assert values[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-6)
    assert all(a <= b for a, b in zip(values[:10], values[1:11], strict=True))
    assert all(a >= b for a, b in zip(values[10:-1], values[11:], strict=True))


def test_scheduler_scales_each_group_to_its_peak() -> None:
    model = Toy()
    groups = param_groups(model, 1e-4, 1e-3, 0.0, ssm_prefixes=("ssm",))
    optimizer = torch.optim.AdamW(groups)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=5,
                                start_factor=0.01, final_factor=0.0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    peaks = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert peaks["ssm"] == pytest.approx(1e-3) and peaks["rest"] == pytest.approx(1e-4)
    for _ in range(15):
        optimizer.step()
        scheduler.step()
    assert all(math.isclose(g["lr"], 0.0, abs_tol=1e-12) for g in optimizer.param_groups)


def test_authors_groups_decay_everything_and_keep_A_log_at_the_base_lr() -> None:
    groups = param_groups(Toy(), peak_lr=1e-3, ssm_peak_lr=3e-3, weight_decay=4e-5,
                          ssm_prefixes=("ssm", "A_log"), decay_exclusions=False, a_log_lr="base")
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"rest", "ssm"}
    assert all(g["weight_decay"] == 4e-5 for g in groups)
    assert torch.Size([8, 4]) in {p.shape for p in by_name["rest"]["params"]}  # A_log
    assert torch.Size([8]) in {p.shape for p in by_name["ssm"]["params"]}  # D, decayed


def test_authors_lr_warmup_ignores_the_group_peak() -> None:
    args = dict(base_lr=1e-3, start_lr=3e-6, end_lr=3e-5, warmup_epochs=2.0, max_epoch=100.0)
    assert authors_lr(0.0, 3e-3, **args) == pytest.approx(3e-6)
    assert authors_lr(1.999, 3e-3, **args) < 1e-3 < authors_lr(2.0, 3e-3, **args)
    assert authors_lr(1.0, 3e-3, **args) == authors_lr(1.0, 1e-3, **args)
    assert authors_lr(100.0, 3e-3, **args) == pytest.approx(3e-5)
