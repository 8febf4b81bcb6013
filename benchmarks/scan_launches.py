"""Host microseconds of each Triton launch an eager scan forward + backward makes.

    python benchmarks/scan_launches.py             # writes benchmarks/results/scan_launches.*

Why (issue 18): at short lengths eager scan steps are host-bound, and each of their launches
costs host time. This records the launches of one `scan_backends.py` call (`--call`, the
`head` variant at L = 16 by default), the first of each kernel's (the staged forward, the
backward and the partial sums of dA), then times each, its recorded arguments replayed
with the GPU kept busy (so the host never waits): `kernel[grid](...)` (Triton's
`JITFunction.run`: binding, specialisation, cache lookup) and the compiled kernel's own
launcher (the floor it ends with). Median over `--repeats` rounds of `--launches` launches
each. GPU only.

A cache of compiled kernels keyed in Python on what Triton specialises on (`fusion/launch.py`
in commit 6b4aad7) took 48 us for the backward's 57 (floor 13) and was taken out again:
its key cost most of what it saved (scan_launches_h200_s19.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402


@dataclass
class LaunchesConfig:
    """Host microseconds of the scan's Triton launches: Triton's path and the floor."""

    call: str = "head:16"
    """A `scan_backends.py` call, `variant:L`."""
    launches: int = 200
    repeats: int = 5
    out: Path | None = None


def record_launches(call: str) -> dict:
    """{kernel name: (kernel, args, grid, kwargs)} of one forward + backward of `call`."""
    variant, _, length = call.partition(":")
    if not length.isdigit():
        raise SystemExit(f"--call {call}: expected variant:L, e.g. head:16")
    import torch
    import triton.runtime.jit as jit

    from benchmarks.scan_backends import BenchConfig, make_inputs, scan_args, steps_for
    from fusion import ssm

    config = BenchConfig()
    inputs = make_inputs(config, config.batch, int(length), variant, torch.device("cuda"))
    gy = torch.randn(config.batch, config.d_inner, int(length), device="cuda",
                     dtype=torch.bfloat16)
    launches, run = {}, jit.JITFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        launches.setdefault(self.fn.__name__, (self, args, grid, dict(kwargs)))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    jit.JITFunction.run = recording
    try:
        steps_for(lambda: ssm.selective_scan(**scan_args(inputs, variant), backend="triton"),
                  list(inputs.values()), gy)["fwd_bwd"]()
        torch.cuda.synchronize()
    finally:
        jit.JITFunction.run = run
    return launches


def host_us(launch, c: LaunchesConfig) -> float:
    """Median host microseconds a launch, the GPU busy with a sleep the launches queue behind."""
    import torch

    rounds = []
    for _ in range(c.repeats):
        torch.cuda._sleep(int(1e8))
        started = time.perf_counter()
        for _ in range(c.launches):
            launch()
        rounds.append((time.perf_counter() - started) / c.launches * 1e6)
        torch.cuda.synchronize()
    return statistics.median(rounds)


def measure(c: LaunchesConfig) -> list[dict]:
    return [time_launch(name, *launch, c) for name, launch in record_launches(c.call).items()]


def time_launch(name: str, kernel, args: tuple, grid: tuple, kwargs: dict,
                c: LaunchesConfig) -> dict:
    """One recorded launch timed both ways."""
    from triton import knobs
    from triton.runtime.driver import driver

    compiled = kernel[grid](*args, **kwargs)
    device = driver.active.get_current_device()
    bound = list(kernel.device_caches[device][4](
        *args, **kwargs, debug=False,
        instrumentation_mode=knobs.compilation.instrumentation_mode)[0].values())
    grid3 = tuple(grid) + (1,) * (3 - len(grid))

    def floor():  # what `JITFunction.run` ends with, no hooks set
        compiled.run(*grid3, driver.active.get_current_stream(device), compiled.function,
                     compiled.packed_metadata, None, None, None, *bound)

    return {"kernel": name, "arguments": len(bound),
            "triton_us": host_us(lambda: kernel[grid](*args, **kwargs), c),
            "compiled_launcher_us": host_us(floor, c)}


def main(argv: list[str] | None = None) -> Path:
    import torch

    c = cli(LaunchesConfig, args=argv)
    if not torch.cuda.is_available():
        raise SystemExit("scan_launches.py times CUDA launches: run it on a GPU machine")
    rows = measure(c)
    out = c.out or ROOT / "benchmarks" / "results" / "scan_launches"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scan_launches.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    data = {"command": command.strip(), "device": torch.cuda.get_device_name(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    lines = [f"# Host time of the scan's launches ({data['device']})", "",
             f"`{data['command']}`: the launches of one `{c.call}` forward + backward, "
             f"median host microseconds a launch over {c.repeats} rounds of {c.launches}.", "",
             "| kernel | arguments | kernel[grid](...) | compiled launcher |",
             "|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['arguments']} | {r['triton_us']:.1f} | "
              f"{r['compiled_launcher_us']:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
