"""Parameters and FLOPs per clip of a fusion head (the paper's Table 4 accounting).

    python -m fusion.profile --fusion mamba --video-dim 768 --text-dim 768 \\
        --video-len 16 --text-len 64 --json

prints one JSON object: `params` (trainable parameters of the head), `flops` (forward FLOPs
of one clip) and their parts. `flops = flops_counter + flops_scan`:

* `flops_counter`: `torch.utils.flop_counter.FlopCounterMode` over one forward pass of a
  batch of one clip: matrix products, convolutions and attention, 2 FLOPs per multiply-add.
  Elementwise work (activations, norms, softmax) is not counted, for any head.
* `flops_scan`: the selective scans, which the counter cannot see, counted analytically as
  b·d·L·(7n + 1) per `selective_scan` call of (b, d, L) inputs and n states
  (`fusion.ssm.scan_flops` explains the terms). The Mamba head stacks its branches into one
  call padded to the longest branch, and that padded work is what is counted.

`params_over_linear` subtracts a linear verb+noun classifier on the video features, which a
backbone evaluated alone already has: it is the parameter count a head adds to the backbone,
the difference Table 4 reports (ORViT 148 M; +Transformer fusion 242 M; MambaVL 157 M).

Table 4 at the paper's widths (ORViT video 768, RoBERTa-base questions 768, 16 video tokens,
2 x 32 question tokens), with every head's defaults (`d_model` = video width 768; Mamba:
`expand=2, d_state=16, d_conv=4, depth=1`, the two questions sharing one branch; 12x12
Transformer: MLP ratio 4, position tables of 5000 positions for video and questions):

    head                params   over linear   Table 4 delta
    mamba               10.20 M     9.89 M       +9 M   (+9.9 %)
    transformer_12x12   95.41 M    95.10 M      +94 M   (+1.2 %)

`--protocol authors|paper|clean` (default clean) builds the Mamba head with that protocol's
structure (`fusion.protocols`). `--protocol authors` counts what the authors' model adds to its
backbone (`Dongzhikang/MambaVL` @ 601b789d48acdf34ada50e9b4f78f219ffc470dc,
`slowfast/models/video_model_builder.py`): the two mixers, the text projection, the shared
`A_log` and the two classifiers, 9.59 M at D = 768 (`params`; their model has no linear
classifier of its own to subtract, so `params` is the comparison with Table 4's +9 M);
`paper` 10.19 M.

Under `authors` and `paper`, `--fusion mlp|transformer_6x4|transformer_12x12` profiles the
authors' Table 3 baselines (`fusion.heads.authors`: video CLS + one projected pooled question,
fused once per question; `head` in the output names the head built). At D = 768 (`params`,
which count their text projection, fusion and classifiers, what their model adds to its
backbone besides the frozen RoBERTa):

    --fusion            head                          params
    mlp                 mlp_authors                   5.62 M
    transformer_6x4     transformer_authors_6x4      52.27 M
    transformer_12x12   transformer_authors_12x12    94.79 M   (Table 4: 242 - 148 = +94 M)

Their FLOPs are per clip for its 2 questions whatever `--video-len`/`--text-len` say: each
reads one video token and one vector per question.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from features.config import cli
from fusion.heads import build_head, protocol_head
from fusion.protocols import ProtocolName
from fusion.ssm import count_scan_flops

Fusion = Literal["mamba", "mlp", "transformer_6x4", "transformer_12x12"]
Shape = int | tuple[int, int] | Sequence[int]


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# CPU attention kernels the counter does not know (it counts the CUDA ones): same formula
_EXTRA_FORMULAS = {
    getattr(torch.ops.aten, name): _sdpa_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if hasattr(torch.ops.aten, name)
}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _clip_inputs(model: nn.Module, shapes: Mapping[str, Shape], device: torch.device):
    dims = getattr(model, "modality_dims", {})
    inputs = {}
    for name, shape in shapes.items():
        if isinstance(shape, int):
            length, dim = shape, dims[name]
        else:
            length, dim = (int(v) for v in shape[-2:])
        inputs[name] = torch.randn(1, length, dim, device=device)
    return inputs


def profile_model(model: nn.Module, shapes: Mapping[str, Shape]) -> dict[str, int]:
    """`params` and forward `flops` of one clip whose modalities have `shapes`.

    `shapes` maps each modality to its token count (width from `model.modality_dims`) or to
    (length, width). The model is run once in eval mode without gradients, on its own device.
    """
    device = next(model.parameters()).device
    inputs = _clip_inputs(model, shapes, device)
    was_training, backend = model.training, getattr(model, "backend", None)
    model.eval()
    if backend is not None:
        # the Mamba head's torch backend: its convolutions are then F.conv1d, which the
        # counter sees (the Triton ones are opaque to it), so every device counts alike
        model.backend = "torch"
    try:
        with torch.no_grad(), count_scan_flops() as scan, \
                FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            model(inputs, None)
    finally:
        model.train(was_training)
        if backend is not None:
            model.backend = backend
    counted = int(counter.get_total_flops())
    return {"params": count_params(model), "flops": counted + scan.flops,
            "flops_counter": counted, "flops_scan": scan.flops}


def clip_shapes(video_dim: int, text_dim: int, video_len: int, text_len: int,
                questions: str = "two") -> dict[str, tuple[int, int]]:
    """Modalities of one clip: video, and the questions as two modalities, one, or none."""
    shapes = {"video": (video_len, video_dim)}
    if questions == "two":
        half = text_len // 2
        shapes |= {"verb_question": (half, text_dim), "noun_question": (text_len - half, text_dim)}
    elif questions == "one":
        shapes["questions"] = (text_len, text_dim)
    return shapes


@dataclass
class ProfileConfig:
    """Parameters and FLOPs per clip of one fusion head."""

    fusion: Fusion = "mamba"
    protocol: ProtocolName = "clean"
    """Head structure of this protocol (`fusion.protocols`); the options below override it."""
    video_dim: int = 768
    """Video feature width (768: ORViT and AVION ViT-B; 1024: AVION ViT-L)."""
    text_dim: int = 768
    """Question feature width (768: RoBERTa-base)."""
    video_len: int = 16
    """Video tokens per clip."""
    text_len: int = 64
    """Question tokens per clip, split evenly over the two questions (2 x 32)."""
    questions: Literal["two", "one", "none"] = "two"
    """Questions as two modalities (verb, noun), one concatenated sequence, or none."""
    num_verbs: int = 97
    num_nouns: int = 300
    d_model: int | None = None
    """Head width (default: the video width)."""
    d_state: int | None = None
    expand: int | None = None
    d_conv: int | None = None
    depth: int | None = None
    json: bool = False
    """Print one JSON object instead of a table."""


def profile(config: ProfileConfig) -> dict:
    shapes = clip_shapes(config.video_dim, config.text_dim, config.video_len, config.text_len,
                         config.questions)
    options = {k: getattr(config, k) for k in ("d_model", "d_state", "expand", "d_conv", "depth")
               if getattr(config, k) is not None}
    try:
        name, structure = protocol_head(config.protocol, config.fusion)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    torch.manual_seed(0)
    head = build_head(name, modality_dims={m: s[1] for m, s in shapes.items()},
                      num_verbs=config.num_verbs, num_nouns=config.num_nouns,
                      **structure, **options)
    cost = profile_model(head, shapes)
    linear = (config.video_dim + 1) * (config.num_verbs + config.num_nouns)
    return {"fusion": config.fusion, "head": name, "protocol": config.protocol, **cost,
            "params_over_linear": cost["params"] - linear,
            "gflops": cost["flops"] / 1e9, "shapes": {m: list(s) for m, s in shapes.items()},
            "options": options}


def main(argv: Sequence[str] | None = None) -> dict:
    config = cli(ProfileConfig, args=argv)
    result = profile(config)
    if config.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:20s} {value:,}" if isinstance(value, int) else f"{key:20s} {value}")
    return result


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
