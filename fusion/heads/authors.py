"""The authors' Table 3 baselines: their MLP and their Transformer "Fuser", as heads.

Source: `Dongzhikang/MambaVL` @ 601b789d48acdf34ada50e9b4f78f219ffc470dc ("the commit"):
`slowfast/models/video_model_builder.py` (classes Motionformer, AVION, AVION_B: the
`"transformer"` and `"mlp"` branches of `FUSION.METHOD` in `__init__` and `forward`) and
`build/lib/slowfast/models/fusion.py` (`MLP`, `Fuser`, `Block`, `Attention`, `DropPath`; the
`slowfast/models/fusion.py` it imports is committed only as `.pyc`).

What their model does per clip, and what these heads do:
* video: the backbone output's token 0, `x[:, 0]` (the CLS). Here: token 0 of the `video`
  modality, which is the CLS in a `cls` store (one token) and in a `cls+patch` store; in a
  `frame` or `patch` store token 0 is the first frame's token, not a CLS.
* text: `txt_proj(text_model(input_ids)[1])` per question, one (B, D) vector: RoBERTa's pooler
  output (`tanh(dense(h[:, 0]))` over the full 12-layer encoder, whose weights their
  `init_weights()` re-initialised, frozen; ids alone, no attention mask) through `txt_proj`,
  the 3-layer ReLU projection (`fusion.heads.mamba.relu3_projection`). Under `--protocol
  authors` these heads read a `pooler` store by default (`extract text --readout pooler`:
  that output as the question's one token; `fusion.protocols.AUTHORS.baseline_text_readout`),
  so token 0 is the pooler output itself. On a token store (`last-hidden`, e.g. under
  `paper`, or `--text-store` named outright) the pooled vector is the question's token 0
  (`text_pool="first"`: `<s>`, the position the pooler reads, without its dense + tanh) or
  the mean of its real tokens (`text_pool="mean"`); with an `embeddings` store token 0 is the
  same `<s>` embedding for every question. Their RoBERTa is in train mode (dropout 0.1 in
  the encoder while training); ours is extracted in eval mode, once.
* fusion, run once per question with the same weights (verb, then noun), feeding `head0`
  (verb) and `head1` (noun) after `head_drop` (Dropout(MF.HEAD_DROPOUT = 0.0)):
  - `mlp_authors`: `MLP(in=2D, hidden=2D, out=D)` = Linear, GELU, Linear, Dropout(0) on
    `cat(video_cls, text_q)`;
  - `transformer_authors_{6x4,12x12}`: `Fuser(D)` over 4 tokens, `[cls_v, video_cls] + pos_v +
    type_v` then `[cls_t, text_q] + pos_t + type_t` (learned CLS, position tables of 5000 rows,
    type tokens); pre-norm blocks with `qkv_bias=False`, MLP ratio 4, LayerNorm eps 1e-6,
    embedding/attention/projection dropout 0.1, drop-path rising linearly from 0 to 0.1; the
    output is `cls_v` (token 0) with no final norm. AVION and AVION_B build `Fuser(dim)`, its
    defaults 6x4; Motionformer `cfg.FUSION.DEPTH/HEADS` (6/4 by default; 12x12 in the run the
    audit found in `launch.json`).
  The width D is the video width: no projection touches the video (`d_model` other than the
  video width is refused).
* `init="authors"`: the model-wide re-initialisation their constructor ends with
  (`init_weights()`: xavier_uniform on every parameter of more than one dimension, then
  `apply(_init_weights)`: every Linear trunc_normal(0.02) with zero bias, every LayerNorm
  (1, 0)); it overwrites the Fuser's own initialisation (its CLS, type and position tables
  become xavier-uniform of their (1, n, D) shapes). Any other value (`mamba`, the protocol
  field's other value) keeps each module's own initialisation: the Fuser's trunc_normal(0.02)
  tables and Linears, PyTorch's defaults for the MLP, `txt_proj` and the classifiers.

Under `--protocol authors` and `--protocol paper`, `fusion.train --fusion mlp|transformer_6x4|
transformer_12x12` builds these (`protocol_head`); the paper's text (Table 3 paragraph: "2-layer
MLP, where the text embeddings and visual features from ORViT are concatenated"; "a
Transformer containing six layers and four heads"; "12 layers and 12 heads") says no more, so
the commit's structure fills the rest, and `paper` keeps each module's own initialisation
(the re-initialisation is the code's accident). `clean` keeps our own `mlp` and `transformer_*`.

Size at D = 768 with 768-wide questions (`python -m fusion.profile --protocol authors`):
text projection 1.77 M and classifiers 0.31 M in every baseline; MLP 3.54 M (5.62 M in all);
Fuser 6x4 50.20 M (52.27 M in all, 7.68 M of it the two position tables); Fuser 12x12 92.71 M
(94.79 M in all): Table 4's ORViT + Transformer fusion is 242 M against ORViT's 148 M, +94 M.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.authors_init import authors_reinit
from fusion.heads.base import NUM_NOUNS, NUM_VERBS, FusionHead, HeadConfigError, masked_mean
from fusion.heads.mamba import relu3_projection
from fusion.protocols import BASELINES, get_protocol

VIDEO, QUESTIONS = "video", ("verb_question", "noun_question")
TextPool = Literal["first", "mean"]


def protocol_head(protocol: str, fusion: str) -> tuple[str, dict[str, Any]]:
    """The registered head and its constructor options for `--fusion fusion` under
    `protocol`: the authors' baselines under `authors` and `paper` (with the protocol's
    `init`), otherwise `fusion` itself with the protocol's structure (`head_options`)."""
    spec = get_protocol(protocol)
    if spec.builds_baseline(fusion) and fusion in BASELINES:
        return BASELINES[fusion], {"init": spec.init}
    return fusion, spec.head_options(fusion)


class AuthorsBaseline(FusionHead):
    """Video CLS + one projected pooled question, fused once per question (module docstring)."""

    def __init__(self, modality_dims: Mapping[str, int], num_verbs: int = NUM_VERBS,
                 num_nouns: int = NUM_NOUNS, d_model: int | None = None,
                 text_pool: TextPool = "first") -> None:
        dims = dict(modality_dims)
        missing = [m for m in (VIDEO, *QUESTIONS) if m not in dims]
        if missing:
            raise HeadConfigError(f"the authors' baselines read video, verb_question and "
                                  f"noun_question; missing {missing}: train with --questions "
                                  "both on a text store with both questions")
        if dims[QUESTIONS[0]] != dims[QUESTIONS[1]]:
            raise HeadConfigError(f"verb and noun questions differ in width ({dims[QUESTIONS[0]]}"
                                  f" vs {dims[QUESTIONS[1]]}); one txt_proj reads both")
        width = dims[VIDEO]
        if d_model not in (None, width):
            raise HeadConfigError(f"the authors' baselines have no video projection: their "
                                  f"width is the video's, {width}, not d_model={d_model}: pass "
                                  f"--head.d-model {width} or leave it unset")
        if text_pool not in ("first", "mean"):
            raise HeadConfigError(f"text_pool must be 'first' or 'mean', not {text_pool!r}")
        super().__init__(dims, num_verbs, num_nouns, width)
        self.d_model, self.text_pool = width, text_pool
        self.txt_proj = relu3_projection(dims[QUESTIONS[0]], width)

    def fuse(self, video: Tensor, text: Tensor) -> Tensor:
        """(b, D) video CLS and (b, D) projected question -> (b, D) fused feature."""
        raise NotImplementedError

    def forward(self, inputs: Mapping[str, Tensor],
                masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        xs, ms = self.prepare(inputs, masks)  # left-aligned: token 0 is the first real one
        video = xs[VIDEO][:, 0]
        fused = []
        for question in QUESTIONS:  # once per question, the same weights
            x = xs[question]
            pooled = x[:, 0] if self.text_pool == "first" else masked_mean(x, ms[question])
            fused.append(self.fuse(video, self.txt_proj(pooled)))
        return self.classify(*fused)  # head0 <- verb question, head1 <- noun question


class AuthorsMLP(AuthorsBaseline):
    """`mlp_authors`: `MLP(2D, 2D, D)` on [video CLS ; projected question]."""

    def __init__(self, modality_dims: Mapping[str, int], num_verbs: int = NUM_VERBS,
                 num_nouns: int = NUM_NOUNS, d_model: int | None = None,
                 dropout: float = 0.0, text_pool: TextPool = "first",
                 init: str = "authors") -> None:
        super().__init__(modality_dims, num_verbs, num_nouns, d_model, text_pool)
        d = self.d_model
        self.mlp = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, d),
                                 nn.Dropout(dropout))
        if init == "authors":
            authors_reinit(self)

    def fuse(self, video: Tensor, text: Tensor) -> Tensor:
        return self.mlp(torch.cat([video, text], dim=-1))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per sample: the residual branch is dropped for a row with
    probability p and scaled by 1/(1 - p) otherwise (the commit's `drop_path`)."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty(x.shape[0], *(1,) * (x.ndim - 1), device=x.device,
                       dtype=x.dtype).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class FuserBlock(nn.Module):
    """Pre-norm block: x + dp(attn(LN x)), x + dp(MLP(LN x)); qkv without bias."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float,
                 drop_path: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise HeadConfigError(f"the video width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.dropout, self.drop_path = num_heads, dropout, drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout
                                              if self.training else 0.0)
        attn = self.proj_drop(self.proj(attn.transpose(1, 2).reshape(b, n, d)))
        x = x + drop_path(attn, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class AuthorsFuser(AuthorsBaseline):
    """`transformer_authors_*`: the Fuser over [cls_v, video CLS, cls_t, question]."""

    def __init__(self, modality_dims: Mapping[str, int], num_verbs: int = NUM_VERBS,
                 num_nouns: int = NUM_NOUNS, d_model: int | None = None, depth: int = 6,
                 num_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 drop_path: float = 0.1, max_len: int = 5000, text_pool: TextPool = "first",
                 init: str = "authors") -> None:
        super().__init__(modality_dims, num_verbs, num_nouns, d_model, text_pool)
        d = self.d_model
        rates = torch.linspace(0, drop_path, depth).tolist()  # the commit's linear rule
        self.blocks = nn.ModuleList(FuserBlock(d, num_heads, mlp_ratio, dropout, r)
                                    for r in rates)
        self.embd_drop = nn.Dropout(dropout)
        # the commit's shapes: (1, 1, D) tokens, (1, 5000, D) tables (xavier reads the shape)
        self.cls_token_video, self.cls_token_text = (nn.Parameter(torch.zeros(1, 1, d))
                                                     for _ in range(2))
        self.type_video, self.type_text = (nn.Parameter(torch.zeros(1, 1, d)) for _ in range(2))
        self.pos_embed_video, self.pos_embed_text = (nn.Parameter(torch.zeros(1, max_len, d))
                                                     for _ in range(2))
        with torch.no_grad():  # Fuser.__init__: trunc_normal(0.02) tables, then its Linears
            for table in (self.cls_token_video, self.cls_token_text, self.type_video,
                          self.type_text, self.pos_embed_video, self.pos_embed_text):
                nn.init.trunc_normal_(table, std=0.02)
            for module in self.blocks.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        if init == "authors":
            authors_reinit(self)

    def fuse(self, video: Tensor, text: Tensor) -> Tensor:
        b = video.shape[0]
        v = torch.cat([self.cls_token_video.expand(b, -1, -1), video[:, None]], dim=1)
        t = torch.cat([self.cls_token_text.expand(b, -1, -1), text[:, None]], dim=1)
        v = v + self.pos_embed_video[:, :2] + self.type_video
        t = t + self.pos_embed_text[:, :2] + self.type_text
        x = self.embd_drop(torch.cat([v, t], dim=1))
        for block in self.blocks:
            x = block(x)
        return x[:, 0]  # cls_v, no final norm
