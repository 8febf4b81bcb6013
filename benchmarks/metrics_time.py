"""Seconds of the EK100 validation metrics (`fusion.metrics.metrics_for`), scores on a device.

    python benchmarks/metrics_time.py                 # EK100 val size: 9,668 x (97, 300)
    python benchmarks/metrics_time.py --device cpu    # scores on the CPU (auto: the GPU if any)
    python benchmarks/metrics_time.py --quick         # small (tests)

Why (issue 18): every training epoch ends with the metrics on the validation split; on the
H200 host they were most of the validation time (0.7 of 0.8 s an epoch). Training passes
the scores as float32 tensors on its device and the metrics' fast paths run there, so the
scores here are float32 tensors on `--device` (`auto`: CUDA when present, else CPU); the
labels are numpy, as training passes them. Random logits with a boost on the true class
(every rank non-trivial); median of `--repeats` runs after one warm-up. Results: `--out`
.md/.json (default `benchmarks/results/metrics_time`), the device recorded in both.
"""

from __future__ import annotations

import json
import os
import platform
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
class MetricsTimeConfig:
    """Time `metrics_for` on random EK100-shaped scores."""

    rows: int = 9668
    verbs: int = 97
    nouns: int = 300
    task: str = "recognition"
    repeats: int = 5
    device: str = "auto"
    """where the scores live (as training passes them): auto (CUDA when present), cpu, cuda"""
    quick: bool = False
    out: Path | None = None


def main(argv: list[str] | None = None) -> Path:
    import numpy as np
    import torch

    from features.errors import resolve_device
    from fusion.metrics import metrics_for

    c = cli(MetricsTimeConfig, args=argv)
    device = resolve_device(c.device)
    rows, repeats = (300, 2) if c.quick else (c.rows, c.repeats)
    rng = np.random.default_rng(0)
    verb_labels, noun_labels = rng.integers(0, c.verbs, rows), rng.integers(0, c.nouns, rows)
    verb, noun = rng.normal(size=(rows, c.verbs)), rng.normal(size=(rows, c.nouns))
    verb[np.arange(rows), verb_labels] += rng.uniform(0, 4, rows)
    noun[np.arange(rows), noun_labels] += rng.uniform(0, 4, rows)
    # float32 tensors on the device, as predict returns them
    verb, noun = (torch.from_numpy(x.astype(np.float32)).to(device) for x in (verb, noun))
    name = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
            else "cpu")
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the scores are ready, as after predict
        started = time.perf_counter()
        metrics = metrics_for(c.task, verb, noun, verb_labels, noun_labels)  # returns floats
        times.append(time.perf_counter() - started)
    result = {"rows": rows, "verbs": c.verbs, "nouns": c.nouns, "task": c.task,
              "device": name, "median_seconds": round(statistics.median(times[1:]), 4),
              "seconds": [round(t, 4) for t in times[1:]], "metrics": len(metrics),
              "numpy": np.__version__, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads()}
    out = c.out or ROOT / "benchmarks" / "results" / ("metrics_time_quick" if c.quick
                                                      else "metrics_time")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/metrics_time.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = (f"# EK100 metrics time\n\n`{command.strip()}`; {rows} rows, {c.verbs} verbs, "
            f"{c.nouns} nouns, task {c.task}; scores on {name}; numpy {np.__version__}, torch "
            f"{torch.__version__}, {result['cpu_count']} CPUs.\n\n"
            f"median {result['median_seconds']} s over {repeats} runs "
            f"({', '.join(map(str, result['seconds']))})\n")
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(text)
    return out


if __name__ == "__main__":
    main()
