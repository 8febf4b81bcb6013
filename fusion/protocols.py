"""Protocols: named, typed bundles of every choice that differs between three readings of MambaVL.

* `AUTHORS`: the released code (`Dongzhikang/MambaVL` at commit
  601b789d48acdf34ada50e9b4f78f219ffc470dc, "the commit" below) as it runs, quirks included.
* `PAPER`: what the paper's text says (arXiv 2409.11513, §3.2 and §4.1); where the text is
  silent, the comment of the field names the default that fills the gap.
* `CLEAN`: this harness's own choices (today's `fusion.train` defaults), each with its reason.

A protocol only sets defaults: `fusion.train --protocol NAME` starts from its values and every
field stays overridable by its own flag, so an ablation flips one field (see `fusion.train`).
Head structure goes to the Mamba head (`head_options`), the recipe to `TrainConfig`
(`train_fields`). Text readout (per head: `text_readout_for`), text init and question length
are read by `extract.run.protocol_text_options`: they name the default text store of
`fusion.train` (`make embed-text PROTOCOL=NAME` writes the store of each head).

Everything stays on frozen, cached features: the authors fine-tune their backbone end to end
(`tools/train_net.py` of the commit), which no protocol here reproduces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

ProtocolName = Literal["authors", "paper", "clean"]
TextReadout = Literal["embeddings", "last-hidden", "pooler"]

# `fusion.train --fusion NAME` under `authors` and `paper` builds the authors' baseline
# (`fusion.heads.authors`); here so the text readout of a run can follow from its head
BASELINES = {"mlp": "mlp_authors", "transformer_6x4": "transformer_authors_6x4",
             "transformer_12x12": "transformer_authors_12x12"}


@dataclass(frozen=True)
class Protocol:
    """Every choice that differs between `authors`, `paper` and `clean` (see the instances)."""

    name: ProtocolName
    # --- head structure (the Mamba head, `fusion.heads.mamba.MambaFusion`) ---
    block: Literal["prenorm-residual", "bare"]
    """`bare`: the mixer output is pooled directly; `prenorm-residual`: LN, mixer, residual,
    final LN per branch."""
    video_proj: Literal["mlp", "none"]
    """Projection of the video tokens to the head width (`none`: width = video width)."""
    text_proj: Literal["mlp", "relu3"]
    """`mlp`: Linear-GELU-Linear; `relu3`: Linear(no bias)-ReLU-Linear-ReLU-Linear."""
    proj_kernel: int
    """Depthwise 1-D convolution over the projected tokens, centred (0: none)."""
    route_questions: bool
    """Verb classifier: video + verb question; noun classifier: video + noun question.
    False: every pooled modality summed for both."""
    pool_padding: bool
    """Padded positions go through the head and into the mean (no mask anywhere)."""
    init: Literal["mamba", "authors"]
    """`mamba`: S4D-real A, Δ log-uniform in [1e-3, 0.1], PyTorch Linear defaults;
    `authors`: the commit's re-initialisation (xavier on every >1-D weight incl. A_log, then
    every Linear trunc_normal(0.02) with zero bias): A ≈ -1 ± 0.06, Δ = softplus(0)."""
    # --- text features (`extract text` options; they name the protocol's text store) ---
    text_readout: TextReadout
    """Readout of the Mamba head's (and our own heads') questions."""
    baseline_text_readout: TextReadout
    """Readout of the authors' baselines' questions (`BASELINES`)."""
    text_init: Literal["pretrained", "authors-random"]
    question_length: int
    # --- recipe (`fusion.train.TrainConfig` fields of the same names) ---
    optimizer: Literal["adamw", "sgd"]
    """`sgd`: momentum 0.9, Nesterov, dampening 0; `adamw`: betas (0.9, 0.999)."""
    schedule: Literal["warmup-cosine", "authors"]
    """`warmup-cosine`: each group warms up linearly to its own peak, then half-cosine to
    `final_lr` x peak / peak_lr; `authors`: the commit's `lr_policy.py` arithmetic."""
    start_lr: float
    peak_lr: float
    ssm_peak_lr: float
    final_lr: float
    warmup_epochs: float
    weight_decay: float
    decay_exclusions: bool
    """True: no decay on 1-D parameters, biases, A_log and D; False: decay on everything."""
    a_log_lr: Literal["ssm", "base"]
    """Which learning-rate group `A_log` joins."""
    batch_size: int
    label_smoothing: float
    mixup_alpha: float
    """Feature-level mixup of the video input, Beta(α, α) per batch (0: off)."""
    precision: Literal["bf16", "fp16"]
    """Autocast dtype on CUDA (fp16 with a gradient scaler)."""
    grad_clip: float
    """Max global gradient norm (0: none)."""
    selection: Literal["best-epoch", "running-max"]
    """Reported metrics: all from the epoch best on the headline metric, or each metric's
    own maximum over epochs."""

    HEAD_FIELDS = ("block", "video_proj", "text_proj", "proj_kernel", "route_questions",
                   "pool_padding", "init")
    TEXT_FIELDS = ("text_readout", "baseline_text_readout", "text_init", "question_length")

    def head_options(self, fusion: str) -> dict[str, Any]:
        """Constructor options of the `fusion` head under this protocol."""
        if fusion == "mamba":
            return {k: getattr(self, k) for k in self.HEAD_FIELDS}
        if self.name == "clean":
            return {}
        # the authors' baselines (mlp, transformer_*) come from fusion.heads.authors.protocol_head
        raise ValueError(f"--protocol {self.name} defines no {fusion!r} head: train it under "
                         "--protocol clean")

    def builds_baseline(self, fusion: str) -> bool:
        """Whether `--fusion fusion` trains one of the authors' baselines under this protocol
        (`clean` keeps our own `mlp` and `transformer_*`)."""
        return fusion in BASELINES.values() or (self.name != "clean" and fusion in BASELINES)

    def text_readout_for(self, fusion: str) -> TextReadout:
        """The text readout the `fusion` head reads under this protocol (its store's name)."""
        return self.baseline_text_readout if self.builds_baseline(fusion) else self.text_readout

    def train_fields(self) -> dict[str, Any]:
        """The recipe as `fusion.train.TrainConfig` field values."""
        skip = {"name", *self.HEAD_FIELDS, *self.TEXT_FIELDS}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip}


# Source of every AUTHORS value: the commit. Model: `slowfast/models/video_model_builder.py`
# (class AVION_B; AVION and Motionformer have the same fusion code); mixer:
# `slowfast/models/mamba_ssm/modules/mamba_simple.py`; recipe:
# `configs/ORViT/EK_ORVIT_MF_HR_AVION_B_cosine.yaml` over `slowfast/config/defaults.py`;
# groups: `slowfast/models/optimizer.py`; schedule: `slowfast/utils/lr_policy.py` called per
# iteration by `tools/train_net.py`; selection: `EPICValMeter` in `slowfast/utils/meters.py`.
AUTHORS = Protocol(
    name="authors",
    block="bare",  # forward(): mamba_video(x).mean(1) + mamba_text(q).mean(1), no norm/residual
    video_proj="none",  # backbone tokens go straight into mamba_video (d_model = EMBED_DIM)
    text_proj="relu3",  # txt_proj = Linear(768, D, bias=False), ReLU, Linear, ReLU, Linear
    proj_kernel=0,  # no convolution besides Mamba's own causal d_conv=4
    route_questions=True,  # head0 (verb) <- video + verb question, head1 (noun) <- + noun q.
    pool_padding=True,  # no attention mask: all 40 positions, pads included, enter the mean
    init="authors",  # init_weights() + apply(_init_weights) run after every module is built
    text_readout="embeddings",  # text_model.embeddings(input_ids=...), no encoder layers
    # "mlp"/"transformer" branches of forward(): text_model(input_ids=...)[1], the pooler
    baseline_text_readout="pooler",
    text_init="authors-random",  # the same re-initialisation overwrites the RoBERTa weights
    question_length=40,  # tokenizer max_length=40, padding="max_length" (datasets/*.py)
    optimizer="sgd",  # OPTIMIZING_METHOD sgd; MOMENTUM 0.9, NESTEROV True, DAMPENING 0.0
    schedule="authors",  # LR_POLICY cosine, COSINE_AFTER_WARMUP False, warmup end without base_lr
    start_lr=3e-6,  # WARMUP_START_LR
    peak_lr=1e-3,  # BASE_LR
    ssm_peak_lr=3e-3,  # MAMBA_BASE_LR: parameters whose name contains "mamba" (the mixers)
    final_lr=3e-5,  # COSINE_END_LR
    warmup_epochs=2.0,  # WARMUP_EPOCHS
    weight_decay=4e-5,  # WEIGHT_DECAY, L2 inside SGD
    decay_exclusions=False,  # ZERO_WD_1D_PARAM False; `_no_weight_decay` is never read
    a_log_lr="base",  # the model's A_log has no "mamba" in its name: base group, base LR
    batch_size=64,  # TRAIN.BATCH_SIZE, "total mini-batch size" (the paper says 128)
    label_smoothing=0.1,  # MIXUP.LABEL_SMOOTH_VALUE, applied inside the mixed soft targets
    mixup_alpha=0.8,  # MIXUP.ALPHA on inputs[0] (video) only; see `fusion.train.mix_batch`
    precision="fp16",  # TRAIN.MIXED_PRECISION: torch.cuda.amp.autocast + GradScaler
    grad_clip=0.0,  # CLIP_GRAD_VAL / CLIP_GRAD_L2NORM None
    selection="running-max",  # EPICValMeter logs max_* of each metric separately
)

# The paper's text (§3.2, §4.1). Its learning-rate values were lost in the text we have
# (`shared/paper/README.md`); where the text is silent, the released configs above fill
# the value, unless the code's behaviour is evidently accidental (the re-initialisation, the
# warmup that ignores each group's peak, pads in the mean): then the intended behaviour does.
PAPER = Protocol(
    name="paper",
    block="bare",  # Algorithm 1: SSM output straight to pooling; the text names no norm/residual
    video_proj="mlp",  # "MLP layers to project the video and text embeddings into the same space"
    text_proj="mlp",  # same sentence; layer count and activation unsaid: our Linear-GELU-Linear
    proj_kernel=3,  # "1-D convolution layers" on both (eq. 5); kernel unsaid: 3, centred
    route_questions=False,  # "sum the two outputs to get the overall fused representation"
    pool_padding=False,  # "average pooling at the sequence level": padding is not sequence
    init="mamba",  # "initialize a shared state transition matrix": S4D-real, as Mamba [9]
    text_readout="last-hidden",  # "the RoBERTa model to extract embeddings": its output
    baseline_text_readout="last-hidden",  # Table 3 names no readout: the same store
    text_init="pretrained",  # a named pretrained model; the overwrite in the code is a bug
    question_length=40,  # unsaid: the code's tokenizer length
    optimizer="sgd",  # unsaid: the configs' SGD, Nesterov, momentum 0.9
    schedule="warmup-cosine",  # "base LR linearly increases to a peak", then half-wave cosine
    start_lr=3e-6,  # value lost: the configs' WARMUP_START_LR
    peak_lr=1e-3,  # value lost: BASE_LR
    ssm_peak_lr=3e-3,  # "the Mamba block has a higher peak learning rate": MAMBA_BASE_LR
    final_lr=3e-5,  # value lost: COSINE_END_LR
    warmup_epochs=2.0,  # value lost: WARMUP_EPOCHS
    weight_decay=4e-5,  # unsaid: WEIGHT_DECAY
    decay_exclusions=False,  # unsaid: the configs decay everything
    a_log_lr="ssm",  # A is part of "the Mamba block" that has the higher peak LR
    batch_size=128,  # "a batch size of 128"
    label_smoothing=0.1,  # unsaid: MIXUP.LABEL_SMOOTH_VALUE
    mixup_alpha=0.8,  # "follow the same data processing pipelines as the backbones": MIXUP on
    precision="fp16",  # unsaid: TRAIN.MIXED_PRECISION
    grad_clip=0.0,  # unsaid: no clipping in the configs
    selection="best-epoch",  # unsaid (audit §8): one reported model reads as one checkpoint
)

# Today's `fusion.train` defaults (TrainConfig, HeadConfig, fusion/heads/mamba.py,
# fusion/optim.py), chosen for a small head on frozen features.
CLEAN = Protocol(
    name="clean",
    block="prenorm-residual",  # LN + residual + final LN: a stable block for any depth
    video_proj="mlp",  # frozen features of any width meet the text in one learned space
    text_proj="mlp",  # one projection family for every modality
    proj_kernel=3,  # the paper's per-modality 1-D convolution (eq. 5)
    route_questions=False,  # `MambaFusion` default; routing is one flag away
    pool_padding=False,  # padding never changes an output (tokens masked and left-aligned)
    init="mamba",  # Mamba's published initialisation: long and short SSM memories at start
    text_readout="last-hidden",  # pretrained contextual features of the whole encoder
    baseline_text_readout="last-hidden",  # `--fusion mlp_authors` named outright: our store
    text_init="pretrained",
    question_length=32,  # `extract text` default; padding is masked anyway
    optimizer="adamw",  # robust to the scale of frozen features without LR tuning
    schedule="warmup-cosine",  # warmup to each group's own peak, then half-cosine
    start_lr=1e-6,
    peak_lr=1e-4,  # AdamW-scale rates for a small head
    ssm_peak_lr=5e-4,  # the paper's higher LR for the Mamba block
    final_lr=1e-6,
    warmup_epochs=5.0,
    weight_decay=0.05,  # decoupled (AdamW)
    decay_exclusions=True,  # no decay on norms, biases, A_log, D: the usual AdamW practice
    a_log_lr="ssm",  # A belongs to the SSM block
    batch_size=128,  # the paper's batch size
    label_smoothing=0.1,
    mixup_alpha=0.0,  # no mixup: one fixed view per clip, cached
    precision="bf16",  # no gradient scaler needed
    grad_clip=1.0,  # guards the first AdamW steps of a fresh head
    selection="best-epoch",  # every reported metric from one checkpoint that exists
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (AUTHORS, PAPER, CLEAN)}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name` (a ValueError naming the choices otherwise)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
