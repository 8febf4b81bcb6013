"""What every fusion head shares: the interface, masks, pooling and the two classifiers.

A head maps per-modality token features to verb and noun logits:

    out = head(inputs, masks)   # inputs[m]: (b, L_m, D_m); masks[m]: bool (b, L_m), True = token
    out["verb"]: (b, num_verbs), out["noun"]: (b, num_nouns)

Modalities are named by the data (`video`, `verb_question`, `noun_question`, or one `questions`
sequence; `audio` or `flow` later) and their widths are given to the constructor. A missing
mask means every token is real. Padding never changes a head's output: masked tokens are moved
behind the real ones (`left_align`), zeroed, and left out of every pooling.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from features.errors import HarnessError

NUM_VERBS = 97
NUM_NOUNS = 300


def question_branch(name: str) -> bool:
    """Modalities that are questions share one text branch when a head ties them."""
    return "question" in name


def left_align(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Moves each row's real tokens to the front, in order (stable), and zeroes the rest.

    After this every mask is right padding, so causal convolutions and scans running left to
    right never see a padded token before a real one.
    """
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    x = torch.gather(x, 1, order[..., None].expand_as(x))
    mask = torch.gather(mask, 1, order)
    return x * mask[..., None].to(x.dtype), mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens of (b, L, D) `x`; zeros for a row without any."""
    weight = mask.to(x.dtype)[..., None]
    return (x * weight).sum(1) / weight.sum(1).clamp(min=1.0)



class HeadConfigError(HarnessError, ValueError):
    """Head options that cannot build a head (the message names the flag to change)."""

class MLPProjection(nn.Module):
    """Per-modality (or per-branch) projection to the common width: Linear-GELU-Linear."""

    def __init__(self, d_in: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class FusionHead(nn.Module):
    """Base class: checks inputs, fills masks, left-aligns tokens, owns the classifiers."""

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        num_verbs: int = NUM_VERBS,
        num_nouns: int = NUM_NOUNS,
        d_feature: int = 768,
    ) -> None:
        super().__init__()
        if not modality_dims:
            raise ValueError("a fusion head needs at least one modality")
        self.modality_dims = dict(modality_dims)
        self.num_verbs = num_verbs
        self.num_nouns = num_nouns
        self.verb_head = nn.Linear(d_feature, num_verbs)
        self.noun_head = nn.Linear(d_feature, num_nouns)

    def prepare(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Inputs in `modality_dims` order with a bool mask each, real tokens first."""
        missing = set(self.modality_dims) - set(inputs)
        if missing:
            raise KeyError(f"missing modalities {sorted(missing)}; head built for "
                           f"{list(self.modality_dims)}")
        xs, ms = {}, {}
        for name, dim in self.modality_dims.items():
            x = inputs[name]
            if x.ndim != 3 or x.shape[-1] != dim:
                raise ValueError(f"{name}: expected (batch, L, {dim}), got {tuple(x.shape)}")
            mask = None if masks is None else masks.get(name)
            if mask is None:
                xs[name], ms[name] = x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            else:
                xs[name], ms[name] = left_align(x, mask.to(torch.bool))
        return xs, ms

    def classify(self, verb_feature: Tensor, noun_feature: Tensor | None = None) -> dict:
        """Verb and noun logits in the classifiers' own dtype (float32), also under autocast.

        Why: bf16 logits carry 8 significant bits, so the 97 verb and 300 noun scores of a
        clip tie often; the EK100 ranks must then follow the official sort's tie order
        (`fusion.metrics`), which made validation's metrics 3x slower, and predictions
        written to disk would keep the rounding. The cost, measured (H200, EK100 batch of
        128, forward and backward, `benchmarks/results/classifier_gemm_h200.md`): 32 + 49 us a
        step, ~2 % of the Mamba head's; TF32 or a split-K GEMM would save at most ~18 us."""
        noun_feature = verb_feature if noun_feature is None else noun_feature
        dtype = self.verb_head.weight.dtype
        with torch.autocast(verb_feature.device.type, enabled=False):
            return {"verb": self.verb_head(verb_feature.to(dtype)),
                    "noun": self.noun_head(noun_feature.to(dtype))}
