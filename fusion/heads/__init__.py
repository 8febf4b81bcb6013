"""Fusion heads behind one interface and a small registry (timm-style).

    from fusion.heads import build_head
    head = build_head("mamba", modality_dims={"video": 1024, "verb_question": 768,
                                              "noun_question": 768}, num_verbs=97, num_nouns=300)
    out = head(inputs, masks)  # {"verb": (b, 97), "noun": (b, 300)}

Names: `mamba` (shared-A selective-SSM fusion), `mlp`, `transformer_6x4`, `transformer_12x12`
(our baselines), and the authors' Table 3 baselines `mlp_authors`, `transformer_authors_6x4`,
`transformer_authors_12x12` (`fusion.heads.authors`; `protocol_head` picks them for
`--fusion mlp|transformer_*` under the `authors` and `paper` protocols).
Keyword arguments go to the head's constructor (`d_model`, `dropout`, and for `mamba` also
`d_state`, `expand`, `d_conv`, `depth`, `shared_A`, ...); the Transformer names fix depth and heads.
"""

from __future__ import annotations

from collections.abc import Callable

from fusion.heads.authors import AuthorsFuser, AuthorsMLP, protocol_head
from fusion.heads.base import FusionHead, left_align, masked_mean
from fusion.heads.mamba import MambaFusion
from fusion.heads.mlp import MLPFusion
from fusion.heads.transformer import TransformerFusion

HEADS: dict[str, Callable[..., FusionHead]] = {}


def register(name: str, factory: Callable[..., FusionHead]) -> None:
    if name in HEADS:
        raise ValueError(f"fusion head {name!r} is already registered")
    HEADS[name] = factory


def fixed_size(head: type[FusionHead], name: str, depth: int, num_heads: int
               ) -> Callable[..., FusionHead]:
    """A factory of `head` whose depth and heads are fixed by its registered `name`."""

    def build(**kwargs) -> FusionHead:
        fixed = {"depth", "num_heads"} & set(kwargs)
        if fixed:
            raise TypeError(f"{name} fixes {sorted(fixed)}")
        return head(depth=depth, num_heads=num_heads, **kwargs)

    build.__doc__ = f"{head.__name__} with {depth} layers of {num_heads} heads."
    return build


register("mamba", MambaFusion)
register("mlp", MLPFusion)
register("transformer_6x4", fixed_size(TransformerFusion, "transformer_6x4", 6, 4))
register("transformer_12x12", fixed_size(TransformerFusion, "transformer_12x12", 12, 12))
register("mlp_authors", AuthorsMLP)
register("transformer_authors_6x4",
         fixed_size(AuthorsFuser, "transformer_authors_6x4", 6, 4))
register("transformer_authors_12x12",
         fixed_size(AuthorsFuser, "transformer_authors_12x12", 12, 12))


def build_head(name: str, **kwargs) -> FusionHead:
    """The head registered as `name`, built with `kwargs` (modality_dims, num_verbs, ...)."""
    if name not in HEADS:
        raise KeyError(f"unknown fusion head {name!r}; have {sorted(HEADS)}")
    return HEADS[name](**kwargs)


def list_heads() -> list[str]:
    return sorted(HEADS)


__all__ = ["HEADS", "AuthorsFuser", "AuthorsMLP", "FusionHead", "MLPFusion", "MambaFusion",
           "TransformerFusion", "build_head", "left_align", "list_heads", "masked_mean",
           "protocol_head", "register"]
