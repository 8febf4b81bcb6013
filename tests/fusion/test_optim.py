from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fusion.optim import build_scheduler, param_groups, warmup_cosine


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
