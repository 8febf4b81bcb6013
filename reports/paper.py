"""Published values of the MambaVL paper, and what the authors' released code does.

Paper: A. Beedu*, Z. Dong*, J. Sheinkopf, I. Essa, "Mamba Fusion: Learning Actions Through
Questioning", arXiv:2409.11513 (ICASSP 2025), https://arxiv.org/abs/2409.11513.
Code: https://github.com/Dongzhikang/MambaVL, read at commit
601b789d48acdf34ada50e9b4f78f219ffc470dc (every file named below is at that commit).

Why this module: a published number beside ours is only useful if its source is named, so
each value below says where it comes from, and nothing is guessed.

* `PUBLISHED` holds the numbers of the paper's Tables 1, 3 and 4 (cite "MambaVL paper,
  Table N", arXiv 2409.11513). Table 2 (anticipation) was not in the paper text available to
  this project, so `TABLE2` is empty and the tables fall back to the authors' README.
* `RECIPE` holds the implementation details the paper's text gives (section 4.1); where the
  text is silent or its numbers are missing, the entry is None.
* `README_MODEL_ZOO` and `CODE_RECIPE` come from the authors' repository, not the paper.
* Our numbers are heads trained on frozen, cached backbone features; the authors fine-tune
  the backbone end to end (slowfast/models/video_model_builder.py freezes only RoBERTa, and
  slowfast/models/optimizer.py gives every other parameter to the optimizer), so a
  difference to a published value compares two different experiments.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = {
    "arxiv_id": "2409.11513",
    "title": "Mamba Fusion: Learning Actions Through Questioning",
    "code": "https://github.com/Dongzhikang/MambaVL",
    "code_commit": "601b789d48acdf34ada50e9b4f78f219ffc470dc",
    "venue": "ICASSP 2025",
}
SOURCE = "MambaVL paper (arXiv 2409.11513)"


@dataclass(frozen=True)
class Published:
    """One row of a paper table: accuracies in %, GFLOPs per clip, parameters in millions.

    `backbone` is the harness's backbone name where the row is one of ours (orvit, vitb,
    vitl), else the paper's model name; `slot` is the key the report tables look it up by.
    """

    table: int
    row: str
    backbone: str
    slot: str
    pretrain: str = ""
    verb: float | None = None
    noun: float | None = None
    action: float | None = None
    gflops: float | None = None
    params_m: float | None = None

    @property
    def source(self) -> str:
        return f"MambaVL paper, Table {self.table}"

    def vna(self) -> dict[str, float | None]:
        return {"verb": self.verb, "noun": self.noun, "action": self.action}


_K600, _K400, _ORVIT_PT = "K600", "K400", "IN-21k+K400"
_OMNI, _EGO = "IN-(21k+1k)+K400+SUN", "WIT + Ego4D"
# Table 1: EK100 validation, action recognition, top-1 (%). Table 3: fusion ablation on
# ORViT features, top-1 (%). Table 4: GFLOPs and parameters (M) on ORViT.
PUBLISHED: tuple[Published, ...] = (
    Published(1, "MeMViT (24x3)", "MeMViT", "memvit_24x3", _K600, 71.4, 60.3, 48.4),
    Published(1, "Omnivore (swin-B)", "Swin-B", "omnivore_swin_b", _OMNI, 69.5, 61.7, 49.9),
    Published(1, "MeMViT (16x4)", "MeMViT", "memvit_16x4", _K400, 70.6, 58.5, 46.2),
    Published(1, "ORViT (MF-HR)", "orvit", "backbone", _ORVIT_PT, 68.4, 58.7, 45.7),
    Published(1, "MambaVL (ORViT)", "orvit", "mambavl", _ORVIT_PT, 69.1, 63.9, 48.6),
    Published(1, "AVION (ViT-B)", "vitb", "backbone", _EGO, 70.0, 59.8, 49.1),
    Published(1, "LaViLa (TSF-B)", "TSF-B", "lavila", _EGO, 69.0, 58.4, 46.9),
    Published(1, "MambaVL (ViT-B)", "vitb", "mambavl", _EGO, 70.9, 61.1, 49.1),
    Published(1, "AVION (ViT-L)", "vitl", "backbone", _EGO, 73.0, 65.4, 54.4),
    Published(1, "LaViLa (TSF-L)", "TSF-L", "lavila", _EGO, 72.0, 62.9, 51.0),
    Published(1, "MambaVL (ViT-L)", "vitl", "mambavl", _EGO, 74.3, 67.1, 55.0),
    Published(3, "MLP", "orvit", "mlp", "", 62.8, 51.6, 39.6),
    Published(3, "Transformer (6x4)", "orvit", "transformer_6x4", "", 62.9, 51.9, 40.0),
    Published(3, "Transformer (12x12)", "orvit", "transformer_12x12", "", 62.5, 51.8, 39.5),
    Published(3, "MambaVL", "orvit", "mambavl", "", 69.1, 63.9, 48.6),
    Published(4, "ORViT", "orvit", "orvit", gflops=405.0, params_m=148.0),
    Published(4, "ORViT + Transformer Fusion", "orvit", "orvit+transformer_fusion",
              gflops=413.5, params_m=242.0),
    Published(4, "MambaVL", "orvit", "orvit+mambavl", gflops=413.0, params_m=157.0),
)

# Harness backbone name -> the key the tables below use (kept from the first version).
PAPER_KEY = {"orvit": "orvit", "vitb": "avion_vit_b", "vitl": "avion_vit_l"}

# Table 1 rows on a backbone of ours, by (backbone key, method): backbone alone, MambaVL, and
# LaViLa of the same size (TSF-B beside ViT-B, TSF-L beside ViT-L, as the paper groups them).
_VIT_SIZE = {"TSF-B": "vitb", "TSF-L": "vitl"}
TABLE1: dict[tuple[str, str], dict[str, float | None]] = {
    (PAPER_KEY[_VIT_SIZE.get(p.backbone, p.backbone)], p.slot): p.vna()
    for p in PUBLISHED if p.table == 1 and _VIT_SIZE.get(p.backbone, p.backbone) in PAPER_KEY
}
TABLE1_ROWS: dict[tuple[str, str], Published] = {
    (PAPER_KEY[_VIT_SIZE.get(p.backbone, p.backbone)], p.slot): p
    for p in PUBLISHED if p.table == 1 and _VIT_SIZE.get(p.backbone, p.backbone) in PAPER_KEY
}
# Table 1 rows of other methods (no counterpart in this harness), in the paper's order.
TABLE1_OTHERS: tuple[Published, ...] = tuple(
    p for p in PUBLISHED if p.table == 1 and p.slot not in ("backbone", "mambavl", "lavila"))

# Table 2: EK100 action anticipation, class-mean recall@5 (%): not in the text we have.
TABLE2_MISSING = "the paper's Table 2 (anticipation) values are not in the paper text we have"
TABLE2: dict[tuple[str, str], dict[str, float | None]] = {
    ("orvit", "backbone"): dict.fromkeys(("verb", "noun", "action")),
    ("orvit", "mambavl"): dict.fromkeys(("verb", "noun", "action")),
}

# Table 3: fusion ablation; the text names ORViT as the features it ran on.
TABLE3_BACKBONE = "orvit"
TABLE3: dict[str, dict[str, float | None]] = {p.slot: p.vna() for p in PUBLISHED
                                              if p.table == 3}

# Table 4: GFLOPs per clip and parameters (M). The paper does not say which Transformer
# ("ORViT + Transformer Fusion"); its +94 M matches a 12-layer fusion at width 768 better
# than a 6-layer one, so the report sets it beside our Transformer 12x12.
TABLE4_SOURCE = "MambaVL paper, Table 4"
TABLE4: dict[str, dict[str, float | None]] = {
    p.slot: {"params_m": p.params_m, "gflops": p.gflops} for p in PUBLISHED if p.table == 4}

# Implementation details as the paper's text gives them (section 4.1). None: the text is
# silent, or the number was lost from the text we have (the learning-rate values are).
RECIPE = {
    "optimizer": None,  # not named in the text
    "base_lr": None,  # named (base -> peak -> final) but the values are missing
    "peak_lr": None,
    "final_lr": None,
    "ssm_block_lr": None,  # the Mamba block's peak LR is higher than the rest; value missing
    "ssm_block_lr_higher": True,
    "schedule": "linear warmup from a base LR to a peak, then half-wave cosine to a final LR",
    "warmup_epochs": None,  # value missing
    "weight_decay": None,
    "batch_size": 128,  # in total
    "gpus": "8x NVIDIA A40",
    "epochs": 100,
    "d_model": None,
    "d_state": None,
    "expand": None,
    "depth": None,
    "text_encoder": "RoBERTa",
    "max_question_length": None,
    "question_llm": "GPT-4o",  # rewrites the narration, then writes a verb and a noun question
    "question_prompt": None,
    "masking": "the verb is masked in the noun question and the noun in the verb question",
    "frames_per_clip": 16,
    "anticipation_setup": {"anticipation_s": 1.0, "observed_frames": 64, "observed_s": 2.0,
                           "clip_frames": 16, "resolution": 224,
                           "questions_from": "actions AVION recognises in the observed frames"},
    "table3_baselines": "2-layer MLP on concatenated text and video features; Transformers "
                        "6 layers x 4 heads and 12 x 12; all on ORViT features",
}

# --- Authors' README "Model Zoo" (EK100, as printed in their README.md) ---------------------
# The README labels the anticipation row with verb@1/noun@1/action@1 columns; whether those
# are recall@5 is not said.
README_MODEL_ZOO = {
    ("avion_vit_b", "mambavl", "recognition"): {"verb": 70.9, "noun": 61.1, "action": 49.1},
    ("avion_vit_l", "mambavl", "recognition"): {"verb": 74.3, "noun": 67.1, "action": 55.0},
    ("orvit_motionformer", "mambavl", "anticipation"): {
        "verb": 29.1,
        "noun": 35.1,
        "action": 23.9,
    },
}

# --- Authors' released code (NOT the paper) ---------------------------------------------------
# configs/ORViT/*.yaml, slowfast/config/defaults.py, slowfast/models/{video_model_builder,
# optimizer,losses}.py, slowfast/utils/lr_policy.py and tools/{train,test}_net.py, all at
# commit 601b789d48acdf34ada50e9b4f78f219ffc470dc.
CODE_RECIPE = {
    # Recognition, configs/ORViT/EK_ORVIT_MF_HR_AVION_cosine.yaml (ViT-L). The ViT-B file
    # (EK_ORVIT_MF_HR_AVION_B_cosine.yaml) differs in: MF.EMBED_DIM 768 (not 1024);
    # MODEL_NAME AVION_B (not AVION1); LOSS_FUNC soft_cross_entropy (not
    # label_smoothing_cross_entropy); TRAIN/TEST.DATASET Epickitchensavion (not epickitchens);
    # TRAIN.CHECKPOINT_FILE_PATH ./checkpoints/AVION_B/checkpoint_best.pth (not "").
    # AVION1 is not a model class of video_model_builder.py (it registers Motionformer, AVION
    # and AVION_B), so the ViT-L file does not build as committed.
    "avion_recognition": {
        "optimizer": "sgd",  # OPTIMIZING_METHOD sgd, MOMENTUM 0.9; defaults.py NESTEROV True
        "base_lr": 1e-3,  # BASE_LR (ORVIT_BASE_LR also 1e-3)
        # MAMBA_BASE_LR: the group of parameters whose name contains "mamba" (optimizer.py).
        # The shared A_log is named "A_log", so it is in the BASE group at 1e-3, with decay.
        "mamba_lr": 3e-3,
        "schedule": "cosine",  # LR_POLICY cosine from epoch 0 (COSINE_AFTER_WARMUP False)
        # lr_policy.py computes the warmup end without the group's base LR, so every group,
        # the Mamba one included, ramps to ~1e-3; the Mamba group jumps to ~3e-3 at epoch 2.
        "warmup_epochs": 2.0,
        "warmup_start_lr": 3e-6,
        "final_lr": 3e-5,  # COSINE_END_LR
        # WEIGHT_DECAY (L2, SGD) on every trainable parameter: ZERO_WD_1D_PARAM is False and
        # no_weight_decay() names only pos_embed/cls_token/temp_embed; the A_log attribute
        # `_no_weight_decay` is never read by optimizer.py.
        "weight_decay": 4e-5,
        "batch_size": 64,  # TRAIN.BATCH_SIZE, "Total mini-batch size" in defaults.py; 8 GPUs
        "epochs": 100,
        "mixed_precision": True,
        "clip_grad": None,  # CLIP_GRAD_VAL / CLIP_GRAD_L2NORM None in defaults.py
        # MIXUP.ENABLE True (defaults: alpha 0.8, CutMix 1.0, smoothing 0.1); only the video
        # input is mixed (train_net.py). With the ViT-L loss the two cannot run together as
        # committed: losses.LabelSmoothingCrossEntropy gathers with the target as an index,
        # and train_net.py passes it the mixed labels (soft, per its topk(labels, 2) use; the
        # MixUp module itself is stored only as .pyc, so this is not verified in its source).
        "mixup": True,
        "randaug": "rand-m7-n4-mstd0.5-inc1",  # AUG.AA_TYPE
        # ViT-L; smoothing = MIXUP.LABEL_SMOOTH_VALUE = 0.1 (defaults.py, losses.py). ViT-B:
        # soft_cross_entropy.
        "loss": "label_smoothing_cross_entropy",
        "label_smoothing": 0.1,
        "d_model": {"vit_l": 1024, "vit_b": 768},  # MF.EMBED_DIM
        # The yaml says 1 view, 1 crop; tools/test_net.py builds the "val" loader anyway (one
        # clip per segment), so the TEST.* view settings do not decide what is evaluated.
        "test_views": "val loader, one clip per segment (tools/test_net.py)",
    },
    # configs/ORViT/EK_ORVIT_MF_HR_AVION_ANT_cosine.yaml: despite "AVION" in its name it sets
    # MODEL_NAME Motionformer (the ORViT Motionformer) with MF.EMBED_DIM 1024, NUM_HEADS 12.
    "motionformer_1024_anticipation": {
        "model_name": "Motionformer",
        "optimizer": "sgd",
        "base_lr": 1e-3,
        "mamba_lr": 9e-3,  # MAMBA_BASE_LR
        "schedule": "cosine",
        "warmup_epochs": 2.0,
        "warmup_start_lr": 3e-6,
        "final_lr": 3e-5,
        "weight_decay": 4e-5,
        "batch_size": 64,
        "epochs": 100,
        "mixup": False,
        "d_model": 1024,
        "anticipation": True,  # EPICKITCHENS.ANTICIPATION
    },
    # ORViT-Motionformer anticipation: configs/ORViT/EK_ORVIT_MF_HR_ANT.yaml
    "orvit_anticipation": {
        "optimizer": "adamw",  # OPTIMIZING_METHOD adamw (eps 1e-8 in optimizer.py)
        "base_lr": 2e-5,
        "orvit_lr": 1e-5,  # ORVIT_BASE_LR
        "mamba_lr": 2e-4,  # MAMBA_BASE_LR
        "schedule": "steps_with_relative_lrs",  # LRS [1, 0.1, 0.01] at STEPS [0, 19, 40]
        "warmup_epochs": 0.0,
        "weight_decay": 5e-2,
        "batch_size": 24,
        "epochs": 50,
        # CHECKPOINT_EPOCH_RESET True: the weights of an ORViT checkpoint of theirs
        # (checkpoint_epoch_00050.pyth) initialise the model, with no epoch or optimizer
        # state; the code does not say which run produced it.
        "init_checkpoint": "checkpoint_epoch_00050.pyth",
        "d_model": 768,
        "orvit_layers": (1, 6, 10),  # ORVIT.LAYERS, O: 4 objects
        # TEST.NUM_SPATIAL_CROPS 3 in the yaml is never used: tools/test_net.py builds the
        # "val" loader (one clip per segment).
        "test_views": "val loader, one clip per segment (tools/test_net.py)",
        "anticipation": True,
        "loss": "label_smoothing_cross_entropy",
        "label_smoothing": 0.1,
        "mixup": False,
    },
    # Shared across configs
    "frames_per_clip": 16,  # DATA.NUM_FRAMES: 16, SAMPLING_RATE: 4
    "crop_size": 224,  # TRAIN_CROP_SIZE / TEST_CROP_SIZE; TRAIN_JITTER_SCALES [384, 480]
    "num_classes": {"verb": 97, "noun": 300},
    # Fusion block (video_model_builder.py): two Mamba mixers (mamba_simple.Mamba), one for
    # the video tokens, one shared by the verb and the noun question, both given the one
    # A_log parameter (shared_A=self.A_log). No norm, residual or projection on video.
    "fusion": {
        "d_model": "backbone width (1024 ViT-L, 768 ViT-B/ORViT)",
        "d_state": 16,
        "d_conv": 4,
        "expand": 2,
        "depth": 1,  # one mamba_video + one mamba_text mixer
        # A_log is created as S4D-real log(1..16), then the model's init_weights() runs
        # xavier_uniform_ on every parameter with dim > 1, A_log included, so A starts near
        # -1 rather than -1..-16. It is trained at the base LR with weight decay (see above).
        "shared": "A_log",
        "readout": "mean over video tokens + mean over the question's tokens; the verb "
                   "classifier gets video + verb question, the noun classifier video + noun "
                   "question",
    },
    # Transformer-fusion baseline (fusion.Fuser, depth 6, heads 4 unless FUSION.DEPTH/HEADS
    # are set; defaults.py FUSION 6/4). MLP baseline: MLP(2d -> 2d -> d) on [video CLS ;
    # projected pooled text], once per question (video_model_builder.py).
    "transformer_fusion_default": {"depth": 6, "heads": 4},
    # RoBERTa ("FacebookAI/roberta-base") is loaded with requires_grad False, then the
    # model's init_weights()/_init_weights() re-initialise every parameter, RoBERTa's
    # included, so its weights are random (frozen), not pretrained. The Mamba path reads only
    # text_model.embeddings (token + position embedding, LayerNorm, dropout 0.1 from the
    # RoBERTa config, active in training); the MLP/Transformer baselines run the whole
    # (equally re-initialised) encoder and take its pooler output.
    "text_encoder": "FacebookAI/roberta-base, re-initialised by init_weights (random, frozen)",
    "text_readout": {"mamba": "embedding layer", "baselines": "pooler output"},
    "text_embedding_dropout": 0.1,
    "text_projection": "Linear(768,d, no bias) + ReLU + Linear(d,d) + ReLU + Linear(d,d)",
    "max_question_length": 40,  # tokenizer(..., padding="max_length", max_length=40)
    # Questions: per-clip 'verb_question' / 'noun_question' read from
    # EPIC_100_{train,validation}_actions_gpt_questions_clean.pkl (not released). Masking
    # (spaCy lemma match -> "<mask>"): the noun question has the ground-truth verb masked, the
    # verb question the ground-truth noun.
    "question_source": "EPIC_100_*_actions_gpt_questions_clean.pkl",
    "question_llm": None,  # not named in the code or README (the paper says GPT-4o)
}
