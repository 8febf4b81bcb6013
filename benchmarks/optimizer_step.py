"""The Mamba head's optimizer update, timed in the harness's form and in the alternatives.

    python benchmarks/optimizer_step.py --out benchmarks/results/optimizer_step_h200   # GPU
    python benchmarks/optimizer_step.py --quick                                        # CPU

Why (issue 18): in the compiled, graphed EK100 step, PyTorch's fused AdamW over the head's
four parameter groups (17.66 M float32 parameters) took 0.19 ms of 3.69 ms, about 2.6 TB/s
for the 28 bytes a parameter it reads and writes (parameter, gradient, two moments in;
parameter, two moments out), where the H200 streams near 4 TB/s
(`benchmarks/results/profile_step_h200_compiled_s10_sums.md`). This times one update of the
head's real parameters and groups (`fusion.train.build_training`, protocol `clean`) with
random gradients, as each variant:

- `fused`: `torch.optim.AdamW(fused=True)`, the harness's (capturable on CUDA);
- `fused_flat`: the same kernel over one flat tensor a group (4 tensors instead of one a
  parameter): whether the tensor count, not the kernel, costs the time;
- `foreach`: the multi-tensor `foreach` implementation;
- `compiled`: that `foreach` step under `torch.compile` (inductor's fused kernels);
- `triton_multi`: a prototype, here only: one Triton launch for every parameter, a program
  per 4096-element chunk of a tensor (a table row: the tensors' addresses, the chunk, the
  group), bias corrections and learning rates read from the device as capturable optimizers
  do. PyTorch's multi-tensor kernels give each block one 65536-element chunk (`kChunkSize`
  in aten/src/ATen/native/cuda/MultiTensorApply.cuh, pytorch/pytorch @ 4b6fea9): ~270
  blocks for this head on 132 SMs, uneven at the end (the hypothesis this variant tests);
- `triton_flat`: the same kernel over one flat tensor a group;
- `copy`: not an update, a reference: a copy of the same 28 bytes a parameter.

On CUDA each variant is captured in a CUDA graph, as the training step is, and replayed
(`--steps` times, CUDA events): its device time a step. Before timing, every variant takes
one step from the same parameters, moments and gradients, and its parameters are compared
with `fused`'s in float32 spacings of each parameter (within ~8: the same arithmetic in
other orders; on the CPU `triton_flat` is the closer of the two to a float64 update).
Gradient clipping is left out: the harness folds it into the fused kernel
(`fusion.train._clip_in_step`), one norm over the gradients a step either way. `--quick`
(CPU, a small head, no graphs, no `compiled`; the Triton ones only under
`TRITON_INTERPRET=1`: the variants left out are named in the results) checks the variants
agree; its timings mean nothing. Results: `--out`
.md/.json (default `benchmarks/results/optimizer_step`).

Measured (H200, `benchmarks/results/optimizer_step_h200.md`): fused, foreach and compiled
0.179 ms (2.76 TB/s), fused_flat 0.194, the copy of the same bytes 0.185 ms: the harness's
update already moves its bytes as fast as a copy does, so the hypothesis above is refuted
and no optimizer kernel is worth writing. The Triton prototypes took 0.234 ms and differed
from fused AdamW by up to 119 float32 spacings on the GPU (6 under the interpreter; not
investigated, as they are slower anyway).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kernel_report import device_ms  # noqa: E402
from benchmarks.sweep_throughput import device_name  # noqa: E402
from features.config import cli  # noqa: E402

VARIANTS = ("fused", "fused_flat", "foreach", "compiled", "triton_flat", "triton_multi",
            "copy")
TRITON_CHUNK = 4096  # elements a program of the Triton prototypes
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's, as fusion.optim builds it
BYTES_PER_PARAM = 28  # float32 parameter, gradient, two moments read; three written


@dataclass
class OptimizerBenchConfig:
    """Time the Mamba head's AdamW update in several implementations."""

    variants: tuple[str, ...] = VARIANTS
    steps: int = 200
    """Replays timed per variant (CUDA)."""
    quick: bool = False
    """A small head on the CPU: the variants' agreement, no meaningful timing."""
    out: Path | None = None


def head_groups(quick: bool, device: torch.device) -> list[dict]:
    """The Mamba head's parameter groups as training builds them (EK100 input widths)."""
    from fusion.train import HeadConfig, TrainConfig, build_training

    dims = {"video": 1024, "verb_question": 768, "noun_question": 768}
    config = TrainConfig(fusion="mamba", head=HeadConfig(d_model=48 if quick else None),
                         epochs=1)
    model, optimizer, _ = build_training(config, dims, {"num_verbs": 97, "num_nouns": 300},
                                         10, device)
    # at each group's peak rate (the scheduler starts in warm-up): an update far above the
    # parameters' float32 spacing, so the variants' comparison sees the arithmetic
    return [{**{k: v for k, v in g.items() if k != "initial_lr"}, "lr": g["peak_lr"]}
            for g in optimizer.param_groups]


def make_variant(name: str, groups: list[dict], grads: list[list[torch.Tensor]],
                 cuda: bool) -> tuple[Callable[[], object], list[torch.Tensor]]:
    """(one update, the parameters it updates) on fresh copies of `groups`' parameters."""
    def float_lr(g: dict) -> dict:
        lr = g["lr"]
        return {**g, "lr": float(lr) if not cuda else torch.tensor(float(lr), device="cuda")}

    if name == "copy":
        n = sum(p.numel() for g in groups for p in g["params"])
        src = torch.empty(BYTES_PER_PARAM * n // 8, device=groups[0]["params"][0].device)
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)), []
    if name in ("triton_flat", "triton_multi"):
        return _triton_adamw(groups, grads, cuda, flat_groups=name == "triton_flat")
    if name == "fused_flat":
        params = []
        for g, gg in zip(groups, grads, strict=True):
            p = torch.cat([q.detach().reshape(-1) for q in g["params"]]).requires_grad_()
            p.grad = torch.cat([q.reshape(-1) for q in gg])
            params.append(p)
        new_groups = [{**float_lr(g), "params": [p]} for g, p in zip(groups, params,
                                                                      strict=True)]
    else:
        params = []
        new_groups = []
        for g, gg in zip(groups, grads, strict=True):
            ps = [q.detach().clone().requires_grad_() for q in g["params"]]
            for p, grad in zip(ps, gg, strict=True):
                p.grad = grad.clone()
            params += ps
            new_groups.append({**float_lr(g), "params": ps})
    kind = {"fused": {"fused": True}, "fused_flat": {"fused": True}}.get(name, {"foreach": True})
    optimizer = torch.optim.AdamW(new_groups, betas=BETAS, eps=EPS, capturable=cuda, **kind)
    step = optimizer.step
    if name == "compiled":
        step = torch.compile(optimizer.step)
    return step, params


def _triton_adamw(groups: list[dict], grads: list[list[torch.Tensor]], cuda: bool,
                  flat_groups: bool) -> tuple[Callable[[], object], list[torch.Tensor]]:
    """The Triton prototypes: a table of (tensor, chunk) rows, one program a row, one launch.

    `flat_groups`: one flat tensor a group (`triton_flat`); else the parameters' own tensors
    (`triton_multi`, what an optimizer over a model's parameters would see)."""
    device = groups[0]["params"][0].device
    tensors = []  # (parameter, gradient, group)
    for i, (g, gg) in enumerate(zip(groups, grads, strict=True)):
        if flat_groups:
            tensors.append((torch.cat([q.detach().reshape(-1) for q in g["params"]]),
                            torch.cat([q.reshape(-1) for q in gg]), i))
        else:
            tensors += [(q.detach().clone(), gq.clone(), i)
                        for q, gq in zip(g["params"], gg, strict=True)]
    state = [(p, grad, torch.zeros_like(p), torch.zeros_like(p), i) for p, grad, i in tensors]
    table = torch.tensor(
        [[p.data_ptr(), grad.data_ptr(), m.data_ptr(), v.data_ptr(), start, p.numel(), i]
         for p, grad, m, v, i in state for start in range(0, p.numel(), TRITON_CHUNK)],
        dtype=torch.int64, device=device)
    lr = torch.tensor([float(g["lr"]) for g in groups], device=device)
    wd = torch.tensor([float(g["weight_decay"]) for g in groups], device=device)
    step = torch.zeros((), dtype=torch.float64, device=device)
    betas = torch.tensor(BETAS, dtype=torch.float64, device=device)
    bias = torch.empty(2, device=device)
    kernel = _adamw_kernel()

    def update(state: list = state) -> None:  # `state` keeps the table's tensors alive
        # 1 - beta^step on the device, in float64 (beta2 = 0.999 rounded to float32 moves
        # 1 - beta2 by 1.3e-5)
        step.add_(1.0)
        bias.copy_(1.0 - betas ** step)
        kernel[(len(table),)](table, lr, wd, bias, BETAS[0], BETAS[1], EPS,
                              BLOCK=TRITON_CHUNK, num_warps=4 if cuda else 1)

    return update, [p for p, *_ in state]


def _adamw_kernel():
    """AdamW (decoupled decay, bias-corrected, torch.optim.AdamW's order of operations) on
    one chunk of one tensor: its table row holds the parameter, gradient and moment
    addresses, the chunk's start, the tensor's size and its group (learning rate, decay)."""
    import triton
    import triton.language as tl

    @triton.jit
    def adamw(table_ptr, lr_ptr, wd_ptr, bias_ptr, beta1, beta2, eps, BLOCK: tl.constexpr):
        row = table_ptr + tl.program_id(0).to(tl.int64) * 7
        p_ptr = tl.load(row).to(tl.pointer_type(tl.float32))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(tl.float32))
        m_ptr = tl.load(row + 2).to(tl.pointer_type(tl.float32))
        v_ptr = tl.load(row + 3).to(tl.pointer_type(tl.float32))
        offs = tl.load(row + 4) + tl.arange(0, BLOCK)
        mask = offs < tl.load(row + 5)
        group = tl.load(row + 6)
        lr = tl.load(lr_ptr + group)
        wd = tl.load(wd_ptr + group)
        p = tl.load(p_ptr + offs, mask=mask)
        g = tl.load(g_ptr + offs, mask=mask)
        m = beta1 * tl.load(m_ptr + offs, mask=mask) + (1.0 - beta1) * g
        v = beta2 * tl.load(v_ptr + offs, mask=mask) + (1.0 - beta2) * g * g
        bias1 = tl.load(bias_ptr)
        bias2 = tl.load(bias_ptr + 1)
        denom = tl.sqrt(v) / tl.sqrt(bias2) + eps
        p = p * (1.0 - lr * wd) - (lr / bias1) * (m / denom)
        tl.store(p_ptr + offs, p, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)

    return adamw


def flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def run(c: OptimizerBenchConfig) -> dict:
    cuda = torch.cuda.is_available() and not c.quick
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    groups = head_groups(c.quick, device)
    grads = [[torch.randn_like(p) * 1e-2 for p in g["params"]] for g in groups]
    n = sum(p.numel() for g in groups for p in g["params"])
    skipped = {}
    if not cuda:
        skipped = {v: "no torch.compile in --quick" for v in c.variants if v == "compiled"}
        if os.environ.get("TRITON_INTERPRET") != "1":
            skipped |= {v: "Triton needs CUDA or TRITON_INTERPRET=1" for v in c.variants
                        if v.startswith("triton")}
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})", flush=True)
    variants = [v for v in c.variants if v not in skipped]
    start = flat([p for g in groups for p in g["params"]])
    reference = None
    rows = []
    for name in variants:
        step, params = make_variant(name, groups, grads, cuda)
        diff = None
        if params:
            step()  # one update from the common start, compared with `fused`'s
            after = flat(params)
            if reference is None:
                reference = after
            # in float32 spacings of the parameter before or after (the larger): the update
            # is float32 arithmetic in another order, and where it nearly cancels p, or p is
            # large (A_log ~ 6), p's own rounding is a visible share of it
            spacing = torch.finfo(torch.float32).eps * torch.maximum(
                reference.abs(), start.abs()).clamp_min(1e-6)
            diff = ((after - reference).abs() / spacing).max().item()
        ms = device_ms(step, c.steps if cuda else 3, cuda)
        rows.append({"variant": name, "ms": round(ms, 4),
                     "tb_per_s": round(BYTES_PER_PARAM * n / (ms * 1e-3) / 1e12, 2),
                     "max_ulp_diff_vs_first": diff})
        print(rows[-1], flush=True)
    return {"device": device_name() if cuda else "cpu", "params": n, "groups": len(groups),
            "cuda_graphs": cuda, "rows": rows, "skipped": skipped}


def write_report(report: dict, out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**report, "command": command}, indent=2))
    lines = [f"# AdamW update of the Mamba head on {report['device']}", "",
             f"`{command}`; {report['params'] / 1e6:.2f} M parameters in {report['groups']} "
             f"groups, {BYTES_PER_PARAM} bytes a parameter"
             + (", each variant replayed as a CUDA graph" if report["cuda_graphs"] else
                " (CPU: timings mean nothing)") + ".", "",
             "| variant | ms/step | TB/s | max difference from the first, float32 spacings |",
             "|---|---|---|---|"]
    for r in report["rows"]:
        diff = "-" if r["max_ulp_diff_vs_first"] is None else f"{r['max_ulp_diff_vs_first']:.1f}"
        lines.append(f"| {r['variant']} | {r['ms']:.4f} | {r['tb_per_s']:.2f} | {diff} |")
    if report["skipped"]:
        lines += ["", "Not run: " + "; ".join(f"{name} ({why})"
                                            for name, why in report["skipped"].items()) + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> Path:
    c = cli(OptimizerBenchConfig, args=argv)
    out = c.out or ROOT / "benchmarks" / "results" / (
        "optimizer_step_quick" if c.quick else "optimizer_step")
    command = "python benchmarks/optimizer_step.py" + (" --quick" if c.quick else "")
    write_report(run(c), out, command + (f" --out {c.out}" if c.out else ""))
    return out


if __name__ == "__main__":
    main()
