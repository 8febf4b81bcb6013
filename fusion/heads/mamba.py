"""Shared-A selective-SSM fusion (MambaVL, paper §3.2 and Algorithm 1).

Per branch: a projection to `d_model` and a depthwise 1-D convolution over the tokens
(paper eq. 5), then `depth` Mamba layers (input projection, short causal depthwise
convolution, `x_proj` to Δ, B, C, `dt_proj`, skip `D`, output projection). The state matrix
`A = -exp(A_log)` of each layer is ONE parameter used by every branch, so the gradients of all
modalities shape the same state dynamics; with `shared_A=False` each branch has its own (the
ablation the paper does not report). Each modality is mean-pooled and the pooled vectors are
summed into one feature for the verb and noun classifiers; `route_questions=True` instead
gives the verb classifier every modality but the noun question and vice versa (with the
questions alone, `fusion.train --video none`, each classifier then sees its own question only).

Structure options (a protocol of `fusion.protocols` sets them; the defaults are `clean`):
- `block`: `prenorm-residual` (pre-LN, residual, final LN per branch) or `bare` (the mixer
  output is pooled directly);
- `video_proj` (every non-question branch) `mlp` or `none`; `text_proj` (question branches)
  `mlp` (Linear-GELU-Linear) or `relu3` (Linear without bias-ReLU-Linear-ReLU-Linear);
- `proj_kernel`: the eq. 5 convolution's kernel, 0 for none;
- `pool_padding`: no mask anywhere, padded positions go through the head and into the mean;
- `init`: `mamba` (S4D-real A, Δ log-uniform in [1e-3, 0.1]) or `authors`.
`authors` structure (`Dongzhikang/MambaVL` @ 601b789d48acdf34ada50e9b4f78f219ffc470dc,
`slowfast/models/video_model_builder.py`, class AVION_B): `bare`, `video_proj="none"`,
`text_proj="relu3"`, `proj_kernel=0`, routing, `pool_padding`, depth 1, and `init="authors"`:
its `init_weights()` (xavier_uniform on every parameter of more than one dimension, `A_log`
included) then `apply(_init_weights)` (every Linear trunc_normal(0.02), bias 0) leave
A ≈ -1 ± 0.06 and Δ = softplus(0) = 0.693 in every channel. Their mixer
(`slowfast/models/mamba_ssm/modules/mamba_simple.py`) has the same parameters as `MambaMixer`.

Branches: by default the question modalities (`verb_question`, `noun_question`) share one
text branch, as the authors' code runs both questions through one Mamba (`mamba_text`) as
separate batch rows; every other modality (video, audio, ...) has its own. Modalities of a
branch are stacked along the batch, and with a
shared `A` the scans of all branches run in ONE `selective_scan` call (padded to a common
length and stacked along the batch), so the CUDA kernel launches once per layer, not once per
modality. Only when padding would cost more than 1.5x the real scan work (16 video tokens
with 2 x 32 question tokens cost 1.2x; 4096 video tokens with them 2.9x) do branches of very
different lengths get separate calls. A backend that takes per-row `lengths` and skips the
padded steps (`triton`, see `fusion.ssm.RAGGED_BACKENDS`) gets each row's count of real
tokens (unless `pool_padding`), so padding, a short question's included, costs it no scan
work, only memory and the copies that stack the branches. Measured
on the H100 (`benchmarks/results/scan_backends.md`, video 16 + 2 x 32 question tokens), those
copies cost more than a second launch (triton: one call 4.2 ms, two calls 2.5 ms), so by
default ragged backends share a call only when no padding is needed
(`max_padding_ragged = 1.0`); raise it to trade copies for launches (e.g. many tiny branches).

Layout: every tensor of a branch stays (batch, tokens, channels), the layout of the
projections. The eq. 5 convolution and the causal convolution with its SiLU are one
`fusion.token_conv` kernel each in that layout, and the scan reads u, Δ, z, B and C as
transposed views of the projections' outputs (no copies into (b, d, L)). A branch scanned in
a call of its own gets Δ's bias and softplus (in float32), the D skip and the SiLU gate inside
the scan kernel; branches stacked into one call get them around it (each has its own).
On an H200 this took the EK100 training step from about 10 to 5.5 ms and the epoch from 5.42
to 3.77 s (`benchmarks/results/issue18_status.md`).

Padding (unless `pool_padding`): tokens are left-aligned (real ones first), so the causal
convolution and the scan, which run left to right, never carry a padded token into a real
one; the eq. 5 convolution is centred but sees zeros past the last real token, as it would at
the sequence's end; pooling counts real tokens only.

Size at D = 768 (video and RoBERTa-base questions both 768 wide, `expand=2, d_state=16,
d_conv=4, depth=1`), `python -m fusion.profile --fusion mamba --protocol NAME --json`:
clean 10.20 M (two branches of 3.75 M in the Mamba layers and 1.18 M in the projections,
0.31 M classifiers); authors 9.59 M (two mixers 7.49 M, text projection 1.77 M, shared A_log
0.02 M, classifiers 0.31 M: the audit's re-run of their model, Table 4 says +9 M).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.authors_init import authors_reinit
from fusion.heads.base import (
    NUM_NOUNS,
    NUM_VERBS,
    FusionHead,
    HeadConfigError,
    MLPProjection,
    masked_mean,
)
from fusion.heads.base import question_branch as _is_question
from fusion.ssm import RAGGED_BACKENDS, Backend, resolve_backend, selective_scan
from fusion.token_conv import token_conv


class _SplitLinear(torch.autograd.Function):
    """x W^T as its two feature halves (x W_1^T, x W_2^T), one GEMM forward. Backward takes
    the halves' gradients as they come: dx = g_1 W_1 + g_2 W_2 (a GEMM and an accumulating
    one), where `Linear` then `split` concatenates g_1 and g_2 into a (b, L, 2 d_inner)
    gradient first (64 + 16 MB at EK100 sizes, written and read again: H200 epoch 2.038 ->
    2.031 s, `benchmarks/results/issue18_status.md`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, first: int) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x, weight)
        ctx.first = first
        return F.linear(x, weight).split([first, weight.shape[0] - first], dim=-1)

    @staticmethod
    def backward(ctx, g1: Tensor | None, g2: Tensor | None):
        x, weight = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        parts = ((g1, weight[:ctx.first]), (g2, weight[ctx.first:]))
        dx, dw = None, []
        for g, w in parts:
            if g is None:
                dw.append(torch.zeros_like(w))
                continue
            g = g.reshape(-1, w.shape[0])
            dx = g @ w if dx is None else torch.addmm(dx, g, w)
            dw.append(g.t() @ rows)
        dx = torch.zeros_like(rows) if dx is None else dx
        return dx.view_as(x), torch.cat(dw), None


def split_linear(x: Tensor, weight: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """`F.linear(x, weight).split([first, rest], -1)` with `_SplitLinear`'s backward; under
    autocast both operands are cast first, as `F.linear` would be."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    return _SplitLinear.apply(x, weight, first)


class MambaMixer(nn.Module):
    """A Mamba layer of one branch, without its state matrix (the head owns `A_log`).

    Split in two around the scan, `scan_inputs` and `finish`, so the head can run the scans
    of all branches in one call.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # Mamba's initialisation: Δ = softplus(bias) log-uniform in [dt_min, dt_max] at start
        with torch.no_grad():
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹

    def scan_inputs(self, x: Tensor, conv_backend: str = "auto") -> dict[str, Tensor]:
        """(b, L, d_model) -> the scan's u, z and delta (before its bias and softplus)
        (b, d_inner, L) and B, C (b, n, L), all transposed views of (b, L, ·) tensors: the
        scan kernels read those strides, so nothing is copied into (b, ·, L) layout."""
        # one GEMM whose halves' gradients are never concatenated in backward (`_SplitLinear`)
        x_in, z = split_linear(x, self.in_proj.weight, self.d_inner)
        u = token_conv(x_in, self.conv1d.weight, self.conv1d.bias,
                       causal=True, activation="silu", backend=conv_backend)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias is added in float32 by the scan
        return {"u": u.transpose(1, 2), "delta": delta.transpose(1, 2),
                "B": B.transpose(1, 2), "C": C.transpose(1, 2),
                "z": z.transpose(1, 2)}

    def finish(self, y: Tensor) -> Tensor:
        """Gated scan output y·silu(z) (b, d_inner, L) -> output projection (b, L, d_model)."""
        return self.out_proj(y.transpose(1, 2))


def relu3_projection(d_in: int, d_model: int) -> nn.Sequential:
    """The authors' text projection `txt_proj`: Linear(no bias)-ReLU-Linear-ReLU-Linear."""
    return nn.Sequential(nn.Linear(d_in, d_model, bias=False), nn.ReLU(),
                         nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))


def _pad_cat(tensors: list[Tensor], dim: int) -> Tensor:
    """Right-pads `tensors` along `dim` to a common length and stacks them along dim 0
    (a single tensor comes back as it is: `torch.cat` of one would copy it every step)."""
    if len(tensors) == 1:
        return tensors[0]
    length = max(t.shape[dim] for t in tensors)
    padded = []
    for t in tensors:
        pad = [0, 0] * (t.ndim - 1 - dim % t.ndim) + [0, length - t.shape[dim]]
        padded.append(F.pad(t, pad) if length > t.shape[dim] else t)
    return torch.cat(padded, dim=0)


class MambaFusion(FusionHead):
    """Shared-A Mamba fusion; see the module docstring."""

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        num_verbs: int = NUM_VERBS,
        num_nouns: int = NUM_NOUNS,
        d_model: int | None = None,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        depth: int = 1,
        dropout: float = 0.0,
        shared_A: bool = True,  # noqa: N803 - the paper's name
        share_questions: bool = True,
        route_questions: bool = False,
        proj_kernel: int = 3,
        backend: Backend = "auto",
        block: Literal["prenorm-residual", "bare"] = "prenorm-residual",
        video_proj: Literal["mlp", "none"] = "mlp",
        text_proj: Literal["mlp", "relu3"] = "mlp",
        pool_padding: bool = False,
        init: Literal["mamba", "authors"] = "mamba",
    ) -> None:
        """`d_model` defaults to the video width (the first modality's without video)."""
        dims = dict(modality_dims)
        d_model = d_model or dims.get("video", next(iter(dims.values()), 0))
        super().__init__(dims, num_verbs, num_nouns, d_model)
        if proj_kernel < 0 or (proj_kernel and proj_kernel % 2 != 1):
            raise ValueError("proj_kernel must be odd (a centred convolution) or 0 (none)")
        for option, value, choices in (("block", block, ("prenorm-residual", "bare")),
                                       ("video_proj", video_proj, ("mlp", "none")),
                                       ("text_proj", text_proj, ("mlp", "relu3")),
                                       ("init", init, ("mamba", "authors"))):
            if value not in choices:
                raise ValueError(f"{option} must be one of {choices}, not {value!r}")
        self.d_model, self.depth, self.shared_A = d_model, depth, shared_A
        self.route_questions, self.backend = route_questions, backend
        self.prenorm, self.pool_padding = block == "prenorm-residual", pool_padding
        self.max_padding = 1.5
        self.max_padding_ragged = 1.0  # ragged backends skip padded steps, not the copies
        self.branch_of = {m: "question" if share_questions and _is_question(m) else m
                          for m in dims}
        self.branches = list(dict.fromkeys(self.branch_of.values()))
        for branch in self.branches:
            widths = {dims[m] for m in dims if self.branch_of[m] == branch}
            if len(widths) > 1:
                raise ValueError(f"modalities of branch {branch!r} differ in width {widths}")
        first = {b: dims[next(m for m in dims if self.branch_of[m] == b)] for b in self.branches}
        self.proj = nn.ModuleDict({b: self._projection(b, first[b], text_proj, video_proj,
                                                       dropout) for b in self.branches})
        self.proj_conv = nn.ModuleDict({
            b: nn.Conv1d(d_model, d_model, proj_kernel, padding=proj_kernel // 2, groups=d_model)
            if proj_kernel else nn.Identity() for b in self.branches})
        self.norms = nn.ModuleDict({b: nn.ModuleList(nn.LayerNorm(d_model) for _ in range(depth))
                                    for b in self.branches} if self.prenorm else {})
        self.mixers = nn.ModuleDict({
            b: nn.ModuleList(MambaMixer(d_model, d_state, d_conv, expand) for _ in range(depth))
            for b in self.branches})
        self.norm_f = nn.ModuleDict({b: nn.LayerNorm(d_model) for b in self.branches}
                                    if self.prenorm else {})
        self.drop = nn.Dropout(dropout)
        # S4D-real initialisation A[:, i] = -(i + 1); one per layer, or per branch and layer
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(expand * d_model, 1).log()
        shape = (depth,) if shared_A else (len(self.branches), depth)
        self.A_log = nn.Parameter(a.expand(*shape, *a.shape).clone())
        # parameter-name prefixes of the SSM block (fusion.optim gives them their own LR)
        self.ssm_prefixes = ("A_log", "mixers")
        if init == "authors":
            self._authors_init()

    def _projection(self, branch: str, d_in: int, text_proj: str, video_proj: str,
                    dropout: float) -> nn.Module:
        """The branch's projection to `d_model` (question branches: `text_proj`)."""
        question = any(_is_question(m) for m in self.modality_dims if self.branch_of[m] == branch)
        kind = text_proj if question else video_proj
        if kind == "relu3":
            return relu3_projection(d_in, self.d_model)
        if kind == "none":
            if d_in != self.d_model:
                raise HeadConfigError(
                    f"branch {branch!r} has no projection (video_proj='none', as in the authors' "
                    f"head) but is {d_in} wide, not d_model={self.d_model}: pass "
                    f"--head.d-model {d_in} (the authors' d_model is the video width)")
            return nn.Identity()
        return MLPProjection(d_in, self.d_model, dropout)

    def _authors_init(self) -> None:
        """The authors' re-initialisation (`features.authors_init`), each layer's (2D, 16)
        `A_log` table on its own, as their single `A_log` is."""
        authors_reinit(self, per_table=("A_log",))

    def _A(self, branch_index: int, layer: int) -> Tensor:
        a_log = self.A_log[layer] if self.shared_A else self.A_log[branch_index, layer]
        return -torch.exp(a_log.float())

    def _scan(self, layer: int, pieces: dict[str, dict[str, Tensor]],
              lengths: dict[str, Tensor] | None, ragged: bool) -> dict[str, Tensor]:
        """Gated scan outputs y·silu(z) (b, d_inner, L) per branch, one call per group of
        branches (see `scan_groups`). A branch scanned alone gets Δ's bias and softplus, the D
        skip and the gate inside the scan; stacked branches (each its own Δ bias, D and z)
        get them here, around one call. `lengths`: each branch's real tokens per row, for a
        `ragged` backend (it skips the padded steps; their outputs are 0)."""
        out = {}
        for names in self.scan_groups({b: p["u"].shape for b, p in pieces.items()},
                                      ragged=ragged):
            A = self._A(self.branches.index(names[0]), layer)
            mixers = {b: self.mixers[b][layer] for b in names}
            if len(names) == 1:
                p, mixer = pieces[names[0]], mixers[names[0]]
                out[names[0]] = selective_scan(
                    p["u"], p["delta"], A, p["B"], p["C"], mixer.D, p["z"],
                    mixer.dt_proj.bias, delta_softplus=True, backend=self.backend,
                    lengths=None if lengths is None else lengths[names[0]])
                continue
            deltas = [F.softplus(pieces[b]["delta"].float()
                                 + mixers[b].dt_proj.bias.float()[:, None]).to(
                                     pieces[b]["u"].dtype) for b in names]
            stacked = {k: _pad_cat([pieces[b][k] for b in names], dim=-1)
                       for k in ("u", "B", "C")}
            row_lengths = None
            if lengths is not None:
                row_lengths = torch.cat([lengths[b] for b in names])
            elif ragged and len({pieces[b]["u"].shape[-1] for b in names}) > 1:
                row_lengths = torch.cat([torch.full((pieces[b]["u"].shape[0],),
                                                    pieces[b]["u"].shape[-1], dtype=torch.int32,
                                                    device=stacked["u"].device)
                                         for b in names])
            y = selective_scan(stacked["u"], _pad_cat(deltas, dim=-1), A, stacked["B"],
                               stacked["C"], backend=self.backend, lengths=row_lengths)
            start = 0
            for b in names:
                p = pieces[b]
                rows, length = p["u"].shape[0], p["u"].shape[-1]
                y_b = y[start:start + rows, :, :length]
                out[b] = (y_b + p["u"] * mixers[b].D.to(y_b.dtype)[:, None]) * F.silu(p["z"])
                start += rows
        return out

    def scan_groups(self, shapes: Mapping[str, torch.Size],
                    ragged: bool = False) -> list[list[str]]:
        """Branches whose scans run as one call: all of them with a shared A, unless padding
        them to the longest would cost more than `max_padding` (1.5x) the real work; then
        branches of similar length go together (by length, greedily). Unshared: one each.
        `ragged` (the backend skips padded steps): the limit is `max_padding_ragged`."""
        if not self.shared_A:
            return [[b] for b in shapes]
        limit = self.max_padding_ragged if ragged else self.max_padding
        groups: list[list[str]] = []
        for b in sorted(shapes, key=lambda b: shapes[b][-1]):
            group = [*groups[-1], b] if groups else None
            if group and self._padded_cost(group, shapes) <= limit * sum(
                    shapes[g][0] * shapes[g][-1] for g in group):
                groups[-1] = group
            else:
                groups.append([b])
        return groups

    @staticmethod
    def _padded_cost(group: list[str], shapes: Mapping[str, torch.Size]) -> int:
        return sum(shapes[g][0] for g in group) * max(shapes[g][-1] for g in group)

    def forward(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        # pool_padding: the authors' code has no mask, every position is a token
        xs, ms = self.prepare(inputs, None if self.pool_padding else masks)
        members = {b: [m for m in xs if self.branch_of[m] == b] for b in self.branches}
        # the convolutions follow an explicit torch or triton scan backend, else `auto`
        conv_backend = self.backend if self.backend in ("torch", "triton") else "auto"
        h, valid = {}, {}
        for b, mods in members.items():
            x = _pad_cat([xs[m] for m in mods], dim=1)
            valid[b] = _pad_cat([ms[m] for m in mods], dim=1)
            x = self.proj[b](x) * valid[b][..., None].to(x.dtype)  # padded tokens are zeros
            conv = self.proj_conv[b]
            h[b] = x if isinstance(conv, nn.Identity) else token_conv(
                x, conv.weight, conv.bias, causal=False, backend=conv_backend)
        ragged = resolve_backend(self.backend, h[self.branches[0]].device) in RAGGED_BACKENDS
        # real tokens come first in every row (`prepare`), and the scan and the causal
        # convolution run left to right: a ragged backend stops at each row's last real token
        lengths = ({b: valid[b].sum(1, dtype=torch.int32) for b in self.branches}
                   if ragged and not self.pool_padding else None)
        for layer in range(self.depth):
            pieces = {b: self.mixers[b][layer].scan_inputs(
                self.norms[b][layer](h[b]) if self.prenorm else h[b], conv_backend)
                for b in self.branches}
            ys = self._scan(layer, pieces, lengths, ragged)
            for b in self.branches:
                out = self.mixers[b][layer].finish(ys[b])
                h[b] = h[b] + out if self.prenorm else out
        # pooled per branch, then split into its modalities' rows: slicing the (rows, d)
        # means, not the (rows, L, d) tokens, keeps the slices' backward small
        means = {b: masked_mean(self.norm_f[b](h[b]) if self.prenorm else h[b], valid[b])
                 for b in self.branches}
        pooled, start = {}, dict.fromkeys(self.branches, 0)
        for m in xs:
            b, rows = self.branch_of[m], xs[m].shape[0]
            pooled[m] = means[b][start[b]:start[b] + rows]
            start[b] += rows
        if self.route_questions:
            verb = sum(v for m, v in pooled.items() if m != "noun_question")
            noun = sum(v for m, v in pooled.items() if m != "verb_question")
            return self.classify(self.drop(verb), self.drop(noun))
        return self.classify(self.drop(sum(pooled.values())))
