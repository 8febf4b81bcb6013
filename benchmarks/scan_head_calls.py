"""Scan kernel variants timed on the exact calls the Mamba head makes at EK100 sizes.

    python benchmarks/scan_head_calls.py                                   # default tiles
    python benchmarks/scan_head_calls.py --configs "" block_t=4 "block_t=4,maxnreg_bwd=168" \
        --modules fusion.ssm_triton my_variants.ssm_triton_v2              # A/B a kernel copy

Why (issue 18): the head's scans run on transposed views of its projections (strides no
synthetic benchmark reproduces exactly), and GPU timings moved by up to 40 % between machines
with identical compiled kernels (`benchmarks/results/issue18_status.md`), so only variants
timed side by side in one run on the head's own calls compare. This runs the head's forward
once at EK100 sizes (batch 128, video 16 x 1024, two questions of 32 x 768; bf16 autocast),
records every `selective_scan_triton` call (tensors with their strides, flags), then times
each module x config on those calls: `fwd` (inputs requiring grad: states saved) and
`fwd_bwd` (`torch.autograd.grad` of a fixed random gradient), medians of
`triton.testing.do_bench`. Every result is compared with the first module's default
config (relative L2 error of y and each gradient): a variant that computes something else
shows it. `--modules` are importable module names with `fusion.ssm_triton`'s interface
(`selective_scan_triton`, `ScanConfig`); `--configs` are `ScanConfig` fields,
`field=value[,field=value]`, "" for the defaults; a module whose `ScanConfig` lacks a field
(e.g. a copy with extra launch options) reports the point as failed.

`--quick` (tiny sizes) runs on the CPU under `TRITON_INTERPRET=1` (tests); timings there
mean nothing. Results: `--out` .md/.json (default `benchmarks/results/scan_head_calls`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.profile_step import ProfileConfig, random_batch  # noqa: E402
from benchmarks.sweep_throughput import device_name  # noqa: E402
from features.config import cli  # noqa: E402

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "lengths")
"""`selective_scan_triton`'s positional parameters, as `fusion.ssm` passes them."""


@dataclass
class HeadCallsConfig:
    """Time scan kernel variants on the Mamba head's recorded calls."""

    modules: tuple[str, ...] = ("fusion.ssm_triton",)
    configs: tuple[str, ...] = ("",)
    calls: tuple[str, ...] = ()
    """Instead of the head's calls, `scan_backends.py` calls as `variant:L` (`head:1024`,
    `head_views:256`; batch 128, d 1536, n 16, bf16): its table's rows, A/B'd in one run;
    `variant:L:ragged` adds per-row lengths uniform in [L/2, L] (seed 0)."""
    warmup_ms: float = 25.0
    rep_ms: float = 150.0
    """`triton.testing.do_bench` warm-up and repeat budgets per point."""
    quick: bool = False
    out: Path | None = None


def parse_config(module, text: str):
    """`block_t=4,maxnreg_bwd=168,staged_fwd=true` -> module.ScanConfig(...); "" -> None
    (the defaults)."""
    if not text:
        return None
    fields = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        flag = {"true": True, "false": False}.get(value.strip().lower())
        fields[key.strip()] = int(value) if flag is None else flag
    return module.ScanConfig(**fields)


def record_calls(c: ProfileConfig, quick: bool) -> list[dict]:
    """The head's `selective_scan_triton` calls in one forward (arguments by name)."""
    import torch

    import fusion.ssm_triton as scan
    from fusion.train import HeadConfig, TrainConfig, build_training, resolve_device

    device = resolve_device("auto")
    batch = random_batch(c, device)
    dims = {k: int(v.shape[-1]) for k, v in batch.inputs.items()}
    config = TrainConfig(fusion="mamba", head=HeadConfig(backend="triton",
                                                         d_model=48 if quick else None),
                         batch_size=c.batch_size, epochs=1)
    model, _, _ = build_training(config, dims, {"num_verbs": 97, "num_nouns": 300}, 10, device)
    calls, original = [], scan.selective_scan_triton

    def recording(*args, **kwargs):
        calls.append({**dict(zip(ARGS, args, strict=False)), **kwargs})
        return original(*args, **kwargs)

    scan.selective_scan_triton = recording
    try:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            model(batch.inputs, batch.masks)
    finally:
        scan.selective_scan_triton = original
    return calls


def backends_calls(specs: tuple[str, ...], quick: bool) -> list[dict]:
    """`scan_backends.py`'s calls (`variant:L[:ragged]`), arguments by name (`--quick`: its
    CPU sizes)."""
    import torch

    from benchmarks.scan_backends import BenchConfig, make_inputs, scan_args
    from fusion.train import resolve_device

    device = resolve_device("auto")
    config = BenchConfig(d_inner=32, d_state=4, dtype="fp32") if quick else BenchConfig()
    calls = []
    for spec in specs:
        variant, _, rest = spec.partition(":")
        length, _, ragged = rest.partition(":")
        if ragged not in ("", "ragged"):
            raise SystemExit(f"--calls {spec}: expected variant:L or variant:L:ragged")
        rows = 2 if quick else config.batch
        args = scan_args(make_inputs(config, rows, int(length), variant, device), variant)
        lengths = None
        if ragged:  # rows of padded sequences, as the head's stacked branches have
            lengths = torch.randint(int(length) // 2, int(length) + 1, (rows,),
                                    generator=torch.Generator().manual_seed(0),
                                    dtype=torch.int32).to(device)
        calls.append({**{k: args.get(k) for k in ARGS[:8]},
                      "delta_softplus": variant == "full", "lengths": lengths})
    return calls


def run_call(module, call: dict, config, backward: bool):
    """y and (backward) the gradients of every floating input, from fresh leaves sharing the
    recorded tensors' storage and strides."""
    import torch

    inputs = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor)
              and v.is_floating_point() else v for k, v in call.items()}
    y = module.selective_scan_triton(*(inputs.get(k) for k in ARGS), config=config)
    if not backward:
        return y, ()
    leaves = [v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    gy = torch.randn(y.shape, generator=torch.Generator(y.device).manual_seed(1),
                     device=y.device).to(y.dtype)
    return y, torch.autograd.grad(y, leaves, gy)


def relative_errors(got, ref) -> float:
    """Largest relative L2 error over y and the gradients."""
    return max(float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))
               for a, b in zip(got, ref, strict=True))


def bench(step, c: HeadCallsConfig) -> float:
    """Median ms of `step`: `triton.testing.do_bench` on CUDA; elsewhere (the interpreter)
    one run on a host clock, not a speed figure."""
    import torch
    import triton

    if torch.cuda.is_available():
        return triton.testing.do_bench(step, warmup=c.warmup_ms, rep=c.rep_ms,
                                       return_mode="median")
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) * 1e3


def measure(c: HeadCallsConfig) -> dict:
    shape = ProfileConfig()
    if c.quick:
        shape = dataclasses.replace(shape, batch_size=4, video_shape=(4, 32),
                                    text_shape=(6, 32))
    calls = backends_calls(c.calls, c.quick) if c.calls else record_calls(shape, c.quick)
    reference = None
    rows = []
    for module_name in c.modules:
        module = importlib.import_module(module_name)
        for text in c.configs:
            row = {"module": module_name, "config": text or "default"}
            try:
                config = parse_config(module, text)
                outputs = [run_call(module, call, config, backward=True) for call in calls]
                flat = [t for y, grads in outputs for t in (y, *grads)]
                if reference is None:
                    reference = flat
                row["max_rel_err"] = relative_errors(flat, reference)
                for mode, backward in (("fwd", False), ("fwd_bwd", True)):
                    row[f"{mode}_ms_calls"] = [bench(
                        lambda call=call, b=backward, m=module, cfg=config: run_call(
                            m, call, cfg, b), c)
                        for call in calls]
                    row[f"{mode}_ms"] = sum(row[f"{mode}_ms_calls"])
                row["status"] = "ok"
            except Exception as error:  # noqa: BLE001 - a failed variant is a result
                row["status"] = f"failed: {type(error).__name__}: {str(error)[:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    shapes = [{k: [list(v.shape), list(v.stride()), str(v.dtype)] for k, v in call.items()
               if hasattr(v, "stride") and k in ("u", "B", "z")}
              | ({} if call.get("lengths") is None else  # ragged rows: their length range
                 {"lengths": [int(call["lengths"].min()), int(call["lengths"].max())]})
              for call in calls]
    return {"device": device_name(), "calls": shapes, "rows": rows}


def main(argv: list[str] | None = None) -> Path:
    c = cli(HeadCallsConfig, args=argv)
    started = time.perf_counter()
    data = measure(c)
    out = c.out or ROOT / "benchmarks" / "results" / "scan_head_calls"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scan_head_calls.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    data["command"], data["seconds"] = command.strip(), round(time.perf_counter() - started, 1)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    title = (f"`scan_backends.py` calls {', '.join(c.calls)}" if c.calls
             else "the Mamba head's calls")
    lines = [f"# Scan variants on {title} ({data['device']})", "",
             f"`{data['command']}`; {len(data['calls'])} calls (u, B, z: shape, strides, "
             f"dtype): {data['calls']}. Medians of triton.testing.do_bench, summed over the "
             "calls; error: largest relative L2 error of y and the gradients against the "
             "first row.", "",
             "| module | config | fwd ms | fwd+bwd ms | max rel err | status |",
             "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['module']} | {r['config']} | {r.get('fwd_ms', 0):.3f} | "
                     f"{r.get('fwd_bwd_ms', 0):.3f} | {r.get('max_rel_err', float('nan')):.1e}"
                     f" | {r['status']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    main()
