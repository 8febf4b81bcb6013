"""The authors' re-initialisation of a model, in one place for the text encoder and the heads.

Their model runs `init_weights()` then `self.apply(self._init_weights)` at the end of its
`__init__` (`Dongzhikang/MambaVL` at 601b789d48acdf34ada50e9b4f78f219ffc470dc,
`slowfast/models/video_model_builder.py`, classes `Motionformer`, `AVION`, `AVION_B`):
xavier_uniform on every parameter with more than one dimension, then every Linear
trunc_normal(std 0.02) with zero bias and every LayerNorm weight 1, bias 0. It reaches
everything built before it, their pretrained RoBERTa included, which is why the
`authors` protocol reads a re-initialised text model (`extract text --init authors-random`)
and why their Mamba starts at A ≈ -1 and Δ = softplus(0).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def authors_reinit(model: nn.Module, seed: int | None = None,
                   per_table: Iterable[str] = ()) -> None:
    """Re-initialise `model` in place as the authors' model re-initialises itself.

    `per_table`: parameter names (e.g. `A_log`) stacked from several of the authors' (2D, 16)
    tables, each xavier-initialised on its own, as their single table is. `seed`: draw on a
    private CPU generator state (same seed, same values on any device); it is not the
    authors' exact draw, whose stream also initialises the rest of their model.
    """
    tables = set(per_table)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if name in tables:
                for table in param.view(-1, *param.shape[-2:]):
                    nn.init.xavier_uniform_(table)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
