"""MLP fusion (a Table 3 style baseline, our own): pooled modalities concatenated, 2-layer MLP.

Each modality is mean-pooled over its real tokens at its own width, the pooled vectors are
concatenated (video, verb question, noun question, ...) and a Linear-GELU-Linear MLP of hidden
width `2 * d_model` maps them to `d_model` for the classifiers. No token ever meets another
token, so this head measures what pooling alone gives. Any modality set works: the
questions alone (`fusion.train --video none`) concatenate the two pooled questions.

Not the authors' baseline: only its widths match. Theirs (`Dongzhikang/MambaVL` @
601b789d48acdf34ada50e9b4f78f219ffc470dc, `slowfast/models/video_model_builder.py`,
`MLP(in_features=2D, hidden_features=2D, out_features=D)`) takes [video CLS token ; projected
pooler output of RoBERTa] and runs once per question (verb, then noun, same weights), each
result feeding its own classifier; ours sees three mean-pooled modalities at native widths in
one pass, with no text projection.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fusion.heads.base import NUM_NOUNS, NUM_VERBS, FusionHead, masked_mean


class MLPFusion(FusionHead):
    def __init__(
        self,
        modality_dims: Mapping[str, int],
        num_verbs: int = NUM_VERBS,
        num_nouns: int = NUM_NOUNS,
        d_model: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        """`d_model` defaults to the video width (the first modality's without video)."""
        dims = dict(modality_dims)
        d_model = d_model or dims.get("video", next(iter(dims.values()), 0))
        super().__init__(dims, num_verbs, num_nouns, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(sum(dims.values()), 2 * d_model), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model), nn.Dropout(dropout),
        )

    def forward(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        xs, ms = self.prepare(inputs, masks)

        pooled = torch.cat([masked_mean(xs[m], ms[m]) for m in xs], dim=-1)
        return self.classify(self.mlp(pooled))
