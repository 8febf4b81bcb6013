"""Transformer fusion (Table 3 baselines `transformer_6x4` and `transformer_12x12`).

The tokens of every modality are projected to `d_model` (an MLP per branch; the questions
share one, as in the Mamba head), given a learned position embedding (a table per branch) and
a learned modality embedding (one per modality, so the verb and noun questions stay apart),
concatenated into one sequence and run through a pre-norm Transformer encoder (`depth` layers
of `num_heads` heads, MLP ratio 4). For the classifiers each modality's output tokens are
mean-pooled over its real tokens and the pooled vectors summed, as in the Mamba head. Padded
tokens are masked out as keys and left out of the pooling.

Size at the paper's setting (width 768 for video and questions, 12 layers x 12 heads): 85.1 M
in the encoder, 2.4 M in the two projections, 7.7 M in the two position tables of
`max_len=5000` positions (the authors' Fuser keeps 5000-position tables for video and text),
0.3 M in the classifiers: 95.4 M in all, 95.1 M more than a linear classifier on the backbone
(Table 4: +94 M). The 6x4 encoder has 42.5 M (52.9 M in all).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.heads.base import NUM_NOUNS, NUM_VERBS, FusionHead, MLPProjection, masked_mean
from fusion.heads.base import question_branch as _is_question


class Block(nn.Module):
    """Pre-norm encoder layer: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {num_heads} heads")
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        b, L, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, L, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerFusion(FusionHead):
    def __init__(
        self,
        modality_dims: Mapping[str, int],
        num_verbs: int = NUM_VERBS,
        num_nouns: int = NUM_NOUNS,
        d_model: int | None = None,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        max_len: int = 5000,
        share_questions: bool = True,
    ) -> None:
        """`d_model` defaults to the video width (the first modality's without video),
        rounded to the nearest multiple of `8 * num_heads` (1024 -> 1056 for 12 heads)."""
        dims = dict(modality_dims)
        if d_model is None:
            width, step = dims.get("video", next(iter(dims.values()), 0)), 8 * num_heads
            d_model = max(step, round(width / step) * step)
        super().__init__(dims, num_verbs, num_nouns, d_model)
        self.max_len = max_len
        self.branch_of = {m: "question" if share_questions and _is_question(m) else m
                          for m in dims}
        branches = list(dict.fromkeys(self.branch_of.values()))
        first = {b: dims[next(m for m in dims if self.branch_of[m] == b)] for b in branches}
        self.proj = nn.ModuleDict({b: MLPProjection(first[b], d_model) for b in branches})
        self.pos = nn.ParameterDict({b: nn.Parameter(torch.randn(max_len, d_model) * 0.02)
                                     for b in branches})
        self.modality = nn.ParameterDict({m: nn.Parameter(torch.randn(d_model) * 0.02)
                                          for m in dims})
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_ratio, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        xs, ms = self.prepare(inputs, masks)
        tokens = []
        for m, x in xs.items():
            b = self.branch_of[m]
            if x.shape[1] > self.max_len:
                raise ValueError(f"{m}: {x.shape[1]} tokens, more than max_len={self.max_len}")
            tokens.append(self.proj[b](x) + self.pos[b][: x.shape[1]] + self.modality[m])
        x = self.drop(torch.cat(tokens, dim=1))
        mask = torch.cat(list(ms.values()), dim=1)
        for block in self.blocks:
            x = block(x, mask)
        # each modality pooled over its own real tokens, then summed (as in the Mamba head)
        parts = self.norm(x).split([t.shape[1] for t in xs.values()], dim=1)
        pooled = sum(masked_mean(p, ms[m]) for p, m in zip(parts, xs, strict=True))
        return self.classify(self.drop(pooled))
