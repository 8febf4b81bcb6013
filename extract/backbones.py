"""Video backbones: AVION's CLIP-style ViT video encoders, a timm-style registry, checkpoints.

Why this module exists: the fusion heads train on cached features, so the encoder that makes
them must be exactly AVION's (same weights, same token order, same normalisation) while
running without flash-attn. Everything here is plain PyTorch
(`torch.nn.functional.scaled_dot_product_attention`).

Public API (stable; the extraction CLI and the feature store build on it):

- `list_backbones() -> list[str]`: registered names: `vitb` (AVION ViT-B/16), `vitl`
  (AVION ViT-L/14), and small random-init configs for tests and the demo: `vit-tiny`
  (width 192, depth 4, patch 16, 224 px) and `vit-demo` (width 128, depth 2, patch 16, 112 px).
- `backbone_config(name, **overrides) -> BackboneConfig`: the frozen architecture config.
- `build_backbone(name, checkpoint=None, num_frames=16, seed=0, trust_pickle=False,
  **overrides) -> VideoViT`:
  random init is seeded (same weights every run, so resumed extraction is bitwise equal);
  with `checkpoint` the weights are loaded by `load_avion_checkpoint` and its report is kept
  as `model.load_report` (`model.load_report.sha256` for the manifest). Build on the meta
  device (`with torch.device("meta"): build_backbone("vitl")`) to count without allocating.
- `VideoViT.forward_features(x, tokens="frame")`: `x` is (B, 3, T, H, W) float, already
  normalised; returns `cls` (B, 1, D), `frame` (B, T, D) = per-frame mean of the patch
  tokens after the last block and `ln_post`, `patch` (B, T*P, D), frame-major
  (token t*P + i is patch i of frame t), or `cls+patch` (B, 1 + T*P, D), the whole
  sequence (what the authors' code feeds its video Mamba on ORViT). `cls` is exactly what
  AVION's classifier sees; `frame` and `patch` are our readouts. `TOKENS` lists them;
  `model.num_tokens(tokens)` gives L and `model.width` gives D.
- `load_avion_checkpoint(model, path, strict=True, trust_pickle=False) -> CheckpointReport`:
  reads the file with `features.safeload.load_torch` (`weights_only=True` plus the
  `argparse.Namespace`/pandas/numpy data AVION pickles beside the tensors; anything else is
  refused unless `trust_pickle`, the CLI's `--trust-pickle`), then loads AVION
  checkpoints (EK100 fine-tuned classifiers `{'state_dict': {'module.visual.…',
  'module.fc_cls.…'}}`, CLIP dual encoders `module.visual.…`/`module.textual.…`, bare
  encoders); strips `module.`/`_orig_mod.`/`visual.` prefixes, ignores heads
  (`fc_cls`, projections, text tower), maps the non-flash key layout
  (`attn.in_proj_*`, `mlp.c_fc`/`c_proj`, 4-D `conv1`) to the flash/fast-conv1 layout the
  released checkpoints use, interpolates temporal/spatial positional embeddings when sizes
  differ, raises `CheckpointMismatchError` naming missing/unexpected/mis-shaped keys.
- `count_parameters(model)`, `measure_flops(model, batch=1) -> int` (FLOPs = 2 x MACs, as
  `torch.utils.flop_counter.FlopCounterMode` counts them, on the meta device),
  `state_dict_sha256(model)` (a digest of the weights, for random-init manifests).

`python -m extract.backbones --backbone vitb --json` prints parameters and GFLOPs per clip and
the preprocessing the backbone uses by default (`preprocess`: mean/std on 0-255, frames, size,
resize method, timeline fps; `extract.video.PRESETS`) and, for vitb/vitl, AVION's checkpoint:
vitb 85,811,712 params, 899.3 GFLOPs per 16x224 clip; vitl 303,196,160 params, 4129.5
GFLOPs. These are OpenAI CLIP's visual towers (86.19 M / 303.97 M) without the output
projection (heads are not part of the encoder) plus the 16 x D temporal embedding.

Architecture (matching `avion/models/transformer.py::VisionTransformer` as the EK100
checkpoints were trained: `use_fast_conv1=True`, `use_flash_attn=True`): the patch
embedding is a bias-free linear layer on (c, ph, pw)-flattened patches (`conv1`), a class
token, a spatial positional embedding (1 + P, D) whose patch rows are tiled over frames
plus a learned temporal embedding (T, D) repeated over each frame's patches (the class
token gets no temporal term), `ln_pre`, pre-norm blocks with joint space-time attention
over all T*P + 1 tokens (`attn.Wqkv` packs q, k, v in that order; `mlp.fc1`/`fc2` with exact
GELU, since AVION's builders drop `use_quick_gelu`), LayerNorm eps 1e-6, then `ln_post`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from features.errors import HarnessError
from features.safeload import load_torch

TOKENS = ("cls", "frame", "patch", "cls+patch")


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of one video ViT; `name` is the registry key."""

    name: str
    width: int
    depth: int
    heads: int
    patch_size: int
    image_size: int = 224
    num_frames: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    description: str = ""

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid * self.grid


_REGISTRY: dict[str, BackboneConfig] = {}


def register_backbone(config: BackboneConfig) -> BackboneConfig:
    """Add a config to the registry (names are unique)."""
    if config.name in _REGISTRY:
        raise ValueError(f"backbone {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


register_backbone(BackboneConfig("vitb", 768, 12, 12, 16, description="AVION ViT-B/16 (CLIP)"))
register_backbone(BackboneConfig("vitl", 1024, 24, 16, 14, description="AVION ViT-L/14 (CLIP)"))
register_backbone(
    BackboneConfig("vit-tiny", 192, 4, 3, 16, description="random-init test model, 224 px")
)
register_backbone(
    BackboneConfig("vit-demo", 128, 2, 2, 16, image_size=112, description="random-init demo")
)


# AVION's EK100 action-recognition (CLS) fine-tuned checkpoints, LaViLa-pretrained, from
# AVION's docs/MODEL_ZOO.md at 31b00b6 (its scripts/download_checkpoints.sh fetches
# avion_finetune_cls_lavila_vitl_best.pt from shared/static/crnqo9bu0owtfz4yc1yqf8hz6g0ze39b.pt;
# for ViT-B it fetches the *baseline* link under the lavila name, so the zoo's link is given).
AVION_CHECKPOINTS = {
    "vitb": "ViT-B/16 avion_finetune_cls_lavila_vitb_best.pt "
            "(https://utexas.box.com/s/8iokob6ahb94gp1bqbmauhpeunqwx79j, md5 6c3c5e...)",
    "vitl": "ViT-L/14 avion_finetune_cls_lavila_vitl_best.pt "
            "(https://utexas.box.com/s/crnqo9bu0owtfz4yc1yqf8hz6g0ze39b, md5 1871f4...)",
}


def is_pretrained_architecture(name: str) -> bool:
    """True for backbones whose features mean something only with AVION's weights."""
    return name in AVION_CHECKPOINTS


def default_preprocess(name: str) -> str:
    """The preprocessing preset of a backbone: AVION's for vitb/vitl, `ours-v1` otherwise."""
    return "avion" if is_pretrained_architecture(name) else "ours-v1"


def list_backbones() -> list[str]:
    """Registered backbone names."""
    return sorted(_REGISTRY)


def backbone_config(name: str, **overrides: Any) -> BackboneConfig:
    """The registered config of `name`, with fields replaced by `overrides`."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return dataclasses.replace(_REGISTRY[name], **overrides)


# --------------------------------------------------------------------------------- modules


class Attention(nn.Module):
    """Multi-head self-attention with packed q/k/v (flash-attn MHA's `Wqkv` layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.Wqkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.Wqkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (flash-attn `Mlp` key names)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks under the name `resblocks` (AVION/CLIP key names)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, eps) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VideoViT(nn.Module):
    """AVION's video encoder: joint space-time attention over T frames, tubelet size 1."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        c = config
        if c.image_size % c.patch_size:
            raise ValueError(f"image_size {c.image_size} is not a multiple of {c.patch_size}")
        self.config = c
        self.width = c.width
        self.num_frames = c.num_frames
        self.patch_size = c.patch_size
        self.patches_per_frame = c.patches_per_frame
        self.load_report: CheckpointReport | None = None
        self.conv1 = nn.Linear(3 * c.patch_size**2, c.width, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(c.width))
        self.positional_embedding = nn.Parameter(torch.zeros(c.patches_per_frame + 1, c.width))
        if c.num_frames > 1:  # AVION has no temporal embedding for single-frame models
            self.temporal_embedding = nn.Parameter(torch.zeros(c.num_frames, c.width))
        else:
            self.temporal_embedding = None
        self.ln_pre = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.transformer = Transformer(c.width, c.depth, c.heads, c.mlp_ratio, c.norm_eps)
        self.ln_post = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AVION's init: N(0, .02) embeddings, truncated N(0, .02) weights, zero biases."""
        nn.init.normal_(self.class_embedding, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.02)
        nn.init.trunc_normal_(self.conv1.weight, std=0.02)
        for name, p in self.transformer.named_parameters():
            if name.startswith("ln") or ".ln_" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("weight"):
                nn.init.trunc_normal_(p, std=0.02)
            else:
                nn.init.zeros_(p)

    def num_tokens(self, tokens: str = "frame") -> int:
        """Sequence length L of `forward_features(x, tokens)`."""
        patch = self.num_frames * self.patches_per_frame
        lengths = {"cls": 1, "frame": self.num_frames, "patch": patch, "cls+patch": 1 + patch}
        return lengths[_check_tokens(tokens)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 1 + T*P, D) tokens with positional and temporal embeddings."""
        b, c, t, h, w = x.shape
        p = self.patch_size
        size = self.config.image_size
        if c != 3 or t != self.num_frames or h != size or w != size:
            raise ValueError(
                f"expected input (B, 3, {self.num_frames}, {size}, {size}), got {tuple(x.shape)}"
            )
        # (B, C, T, gh, p, gw, p) -> (B, T, gh, gw, C, p, p): frame-major patches, (c, ph, pw)
        x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        x = self.conv1(x.reshape(b, t * self.patches_per_frame, c * p * p))
        cls = self.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding
        patch_pos = pos[1:].repeat(t, 1)
        if self.temporal_embedding is not None:
            patch_pos = patch_pos + self.temporal_embedding.repeat_interleave(
                self.patches_per_frame, dim=0
            )
        return x + torch.cat([pos[:1], patch_pos], dim=0).to(x.dtype)

    def forward_features(self, x: torch.Tensor, tokens: str = "frame") -> torch.Tensor:
        """Tokens at one granularity: `cls` (B,1,D), `frame` (B,T,D), `patch` (B,T*P,D) or
        `cls+patch` (B,1+T*P,D), the whole sequence."""
        _check_tokens(tokens)
        x = self.ln_post(self.transformer(self.ln_pre(self.embed(x))))
        if tokens == "cls":
            return x[:, :1]
        if tokens == "cls+patch":
            return x
        patches = x[:, 1:]
        if tokens == "patch":
            return patches
        b, _, d = patches.shape
        return patches.reshape(b, self.num_frames, self.patches_per_frame, d).mean(dim=2)

    def forward(self, x: torch.Tensor, tokens: str = "frame") -> torch.Tensor:
        return self.forward_features(x, tokens)


def _check_tokens(tokens: str) -> str:
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, got {tokens!r}")
    return tokens


def build_backbone(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    num_frames: int = 16,
    seed: int | None = 0,
    trust_pickle: bool = False,
    **overrides: Any,
) -> VideoViT:
    """Build a registered backbone; random init is seeded, `checkpoint` loads AVION weights.

    `trust_pickle` fully unpickles a checkpoint the safe loader refuses (runs its code).
    """
    config = backbone_config(name, num_frames=num_frames, **overrides)
    if seed is None:
        model = VideoViT(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VideoViT(config)
    if checkpoint is not None:
        load_avion_checkpoint(model, checkpoint, trust_pickle=trust_pickle)
    return model


# ------------------------------------------------------------------------------ checkpoints


class CheckpointMismatchError(HarnessError, ValueError):
    """A checkpoint whose keys or shapes do not fit the model; the message lists them."""


@dataclass
class CheckpointReport:
    """What `load_avion_checkpoint` did; `sha256` goes into the feature-store manifest."""

    path: str
    sha256: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    renamed: int = 0
    pickle_fallback: bool = False
    """True when the file was fully unpickled (refused by the safe loader, `trust_pickle`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Weights that belong to AVION's heads or text tower, never to the video encoder.
_HEAD_PREFIXES = ("fc_cls.", "textual.", "image_projection", "text_projection", "logit_scale")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Non-flash (nn.MultiheadAttention / CLIP) names -> flash-attn names of the released weights.
_RENAMES = (
    (".attn.in_proj_weight", ".attn.Wqkv.weight"),
    (".attn.in_proj_bias", ".attn.Wqkv.bias"),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """Hex sha256 over a model's state dict (names, dtypes, shapes, bytes), in key order."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _unwrap_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """Find the tensor mapping inside a checkpoint: `state_dict`, `model`, or the object."""
    for key in ("state_dict", "model", "model_state", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path}: no state dict of tensors found in the checkpoint")
    return obj


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def remap_avion_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Encoder keys in this module's layout; returns (state, ignored keys, renamed count).

    With any `visual.` key present, only the `visual.` subtree is the encoder (a CLIP-style
    model's root `positional_embedding` belongs to the text tower); otherwise every key is.
    """
    stripped = {_strip_prefix(k): v for k, v in state.items()}
    has_visual = any(k.startswith("visual.") for k in stripped)
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    renamed = 0
    for key, value in stripped.items():
        if has_visual:
            if not key.startswith("visual."):
                ignored.append(key)
                continue
            key = key[len("visual.") :]
        if key.startswith(_HEAD_PREFIXES) or key == "proj":
            ignored.append(key)
            continue
        for old, new in _RENAMES:
            if old in key:
                key, renamed = key.replace(old, new), renamed + 1
        if key == "conv1.weight" and value.ndim == 4:  # Conv2d -> fast-conv1 Linear
            value, renamed = value.flatten(1), renamed + 1
        out[key] = value
    return out, ignored, renamed


def interpolate_temporal_embedding(embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(T0, D) -> (num_frames, D), linear, as AVION's resume path does."""
    x = embed.float().T.unsqueeze(0)  # (1, D, T0)
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    return x.squeeze(0).T.to(embed.dtype).contiguous()


def interpolate_positional_embedding(embed: torch.Tensor, patches: int) -> torch.Tensor:
    """(1 + g0^2, D) -> (1 + patches, D): bicubic on the square patch grid, class row kept."""
    g0, g1 = math.isqrt(embed.shape[0] - 1), math.isqrt(patches)
    if g0 * g0 != embed.shape[0] - 1 or g1 * g1 != patches:
        raise CheckpointMismatchError(
            f"positional_embedding {tuple(embed.shape)} is not 1 + a square grid of patches"
        )
    grid = embed[1:].float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g1, g1), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(patches, -1).to(embed.dtype)
    return torch.cat([embed[:1], grid], dim=0)


def _listing(title: str, keys: list[str], limit: int = 12) -> str:
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    shown = ", ".join(keys[:limit]) + more
    return f"\n  {title} ({len(keys)}): {shown}"


def load_avion_checkpoint(
    model: VideoViT,
    path: str | os.PathLike,
    strict: bool = True,
    trust_pickle: bool = False,
) -> CheckpointReport:
    """Load an AVION checkpoint into `model`; see the module docstring for accepted layouts.

    The file is read safely (`features.safeload.load_torch`); only `trust_pickle` fully
    unpickles one that holds more than tensors and AVION's plain `args` data. With `strict`,
    any missing, unexpected or mis-shaped encoder key raises `CheckpointMismatchError`
    listing them (heads and text tower are ignored, never unexpected). The report (with the
    file's sha256) is returned and kept on `model.load_report`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sha = file_sha256(path)
    raw, fell_back = load_torch(path, trust_pickle)
    state, ignored, renamed = remap_avion_state_dict(_unwrap_state_dict(raw, path))
    own = model.state_dict()
    interpolated: list[str] = []
    for key, fix in (
        ("temporal_embedding", lambda v: interpolate_temporal_embedding(v, model.num_frames)),
        (
            "positional_embedding",
            lambda v: interpolate_positional_embedding(v, model.patches_per_frame),
        ),
    ):
        if (
            key in state
            and key in own
            and state[key].shape != own[key].shape
            and state[key].ndim == 2
            and state[key].shape[1] == own[key].shape[1]
        ):
            before = tuple(state[key].shape)
            state[key] = fix(state[key])
            interpolated.append(f"{key} {before} -> {tuple(state[key].shape)}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(
        f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if mis_shaped or (strict and (missing or unexpected)):
        message = f"{path}: checkpoint does not fit backbone {model.config.name!r}"
        for title, keys in (
            ("missing from checkpoint", missing),
            ("unexpected in checkpoint", unexpected),
            ("shape mismatch", mis_shaped),
        ):
            if keys:
                message += _listing(title, keys)
        message += "\n  (is it a checkpoint of another backbone, e.g. ViT-L for ViT-B?)"
        raise CheckpointMismatchError(message)
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report = CheckpointReport(
        path=str(path),
        sha256=sha,
        loaded=len(own) - len(result.missing_keys),
        missing=missing,
        unexpected=unexpected,
        ignored=ignored,
        interpolated=interpolated,
        renamed=renamed,
        pickle_fallback=fell_back,
    )
    model.load_report = report
    return report


# ------------------------------------------------------------------------------ measuring


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def measure_flops(model: VideoViT, batch: int = 1, tokens: str = "frame") -> int:
    """FLOPs of one forward pass on a `batch` of clips, counted on the meta device.

    `FlopCounterMode` counts 2 FLOPs per multiply-add (matmuls and attention); norms,
    GELU and adds are not counted. GMACs = GFLOPs / 2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    meta = model if _on_meta(model) else _meta_copy(model)
    x = torch.empty(batch, 3, c.num_frames, c.image_size, c.image_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta.forward_features(x, tokens)
    return int(counter.get_total_flops())


def _on_meta(model: nn.Module) -> bool:
    return all(p.device.type == "meta" for p in model.parameters())


def _meta_copy(model: VideoViT) -> VideoViT:
    with torch.device("meta"):
        return VideoViT(model.config)


def _params_iter(model: nn.Module) -> Iterator[tuple[str, int]]:
    for name, module in model.named_children():
        yield name, count_parameters(module)


def describe_backbone(name: str, num_frames: int = 16, **overrides: Any) -> dict[str, Any]:
    """Parameters and FLOPs of a registered backbone per clip, without allocating weights."""
    with torch.device("meta"):
        model = build_backbone(name, num_frames=num_frames, seed=None, **overrides)
    c = model.config
    params = count_parameters(model)
    flops = measure_flops(model)
    from extract.video import PRESETS

    pre = PRESETS[default_preprocess(name)]
    return {
        "backbone": name,
        "description": c.description,
        "width": c.width,
        "depth": c.depth,
        "heads": c.heads,
        "patch_size": c.patch_size,
        "image_size": c.image_size,
        "num_frames": c.num_frames,
        "tokens_per_clip": 1 + c.num_frames * c.patches_per_frame,
        "params": params,
        "params_m": round(params / 1e6, 2),
        "flops_per_clip": flops,
        "gflops_per_clip": round(flops / 1e9, 1),
        "gmacs_per_clip": round(flops / 2e9, 1),
        "params_by_module": dict(_params_iter(model)),
        "preprocess": {
            **pre.to_dict(),
            "frames": c.num_frames,
            "size": c.image_size,
            "resize_method": pre.resize,
        },
        "checkpoint": AVION_CHECKPOINTS.get(name),
    }


@dataclass
class BackboneInfo:
    """Print a backbone's parameter count and GFLOPs per clip (counted on the meta device)."""

    backbone: str = "vitb"
    """registered name (see `list_backbones()`)"""
    num_frames: int = 16
    image_size: int | None = None
    """override the config's input size"""
    json: bool = False
    """print one JSON object instead of a line of text"""


def main(args: list[str] | None = None) -> dict[str, Any]:
    from features.config import cli

    info = cli(BackboneInfo, args=args)
    overrides = {} if info.image_size is None else {"image_size": info.image_size}
    result = describe_backbone(info.backbone, num_frames=info.num_frames, **overrides)
    if info.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['backbone']}: {result['params_m']} M params, "
            f"{result['gflops_per_clip']} GFLOPs ({result['gmacs_per_clip']} GMACs) per "
            f"{result['num_frames']}x{result['image_size']} clip, "
            f"{result['tokens_per_clip']} tokens"
        )
    return result


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
