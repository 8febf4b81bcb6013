"""Published values of the MambaVL paper, and what the authors' code and README say.

Paper: A. Beedu*, Z. Dong*, J. Sheinkopf, I. Essa, "Mamba Fusion: Learning Actions Through
Questioning", arXiv:2409.11513 (v1, Sep 2024; v2, ICASSP 2025 version),
https://arxiv.org/abs/2409.11513. Code: https://github.com/Dongzhikang/MambaVL.

How these values were collected (read this before using any number here):

* The stored copies of https://arxiv.org/html/2409.11513v1 and .../2409.11513v2 in the
  search tool's "pages" corpus return only the opening ~2,000 characters of each page (title,
  abstract, first lines of the introduction), whatever the query. Fourteen targeted queries
  (Table 1-4, GFLOPs, parameters, implementation details, learning rate, AdamW, warmup,
  d_state, RoBERTa, ORViT, AVION, anticipation, recall@5, questions, GPT, masking) returned
  nothing beyond the abstract, and no third-party page (bohrium, newx.sg) quoted the tables.
  So NO table value and NO implementation-detail sentence of the paper body was found:
  every paper-sourced entry below is None. Nothing here is guessed.
* What was found instead comes from the authors' repository (read through the code index,
  commit 601b789d48acdf34ada50e9b4f78f219ffc470dc; README at b0a29c122a / 5563b9ec3a):
  README_MODEL_ZOO (numbers the README publishes) and CODE_RECIPE (released configs and
  model code). These are not the paper and may differ from what the paper reports.
* The only paper text seen is the abstract (identical claims in v1 and v2): "MambaVL
  achieves state-of-the-art performance in action recognition on the Epic-Kitchens-100
  dataset and outperforms baseline methods in action anticipation." v1 says the shared state
  transition matrix lets the model "capture information about actions from multiple
  perspectives within the scene"; v2 says "capture a more comprehensive understanding of the
  actions in the scene". v2 lists Beedu first (equal contribution); v1/arXiv metadata list
  Dong first.
"""

PAPER = {
    "arxiv_id": "2409.11513",
    "versions_seen": ("v1", "v2"),  # abstract only, see module docstring
    "code": "https://github.com/Dongzhikang/MambaVL",
    "venue": "ICASSP 2025",  # README: "MambaVL has been accepted to ICASSP 2025."
}

# --- Paper tables: NOT FOUND (only the abstract of v1/v2 was retrievable) -------------------
# Keys follow the requested layout; every value is None because the paper body was not seen.
_VNA = ("verb", "noun", "action")


def _missing() -> dict:
    return dict.fromkeys(_VNA)


# Table 1: EK100 validation, action recognition, top-1 (%). Rows per backbone x method.
TABLE1 = {
    ("orvit", "backbone"): _missing(),
    ("orvit", "mambavl"): _missing(),
    ("avion_vit_b", "backbone"): _missing(),
    ("avion_vit_b", "mambavl"): _missing(),
    ("avion_vit_l", "backbone"): _missing(),
    ("avion_vit_l", "mambavl"): _missing(),
}

# Table 2: EK100 action anticipation, class-mean recall@5 (%).
TABLE2 = {
    ("orvit", "backbone"): _missing(),
    ("orvit", "mambavl"): _missing(),
}

# Table 3: fusion ablation; backbone not found either.
TABLE3_BACKBONE = None
TABLE3 = {
    "mlp": _missing(),
    "transformer_6x4": _missing(),
    "transformer_12x12": _missing(),
    "mambavl": _missing(),
}

# Table 4: parameters (millions) and GFLOPs. Parameters as quoted in issue 3 from the
# paper's Table 4 ("ORViT alone 148 M, +Transformer fusion 242 M, MambaVL 157 M"); we could
# not read them in the paper text ourselves. GFLOPs are unknown (not quoted anywhere seen).
TABLE4_SOURCE = "as quoted in issue 3 from the paper's Table 4"
TABLE4 = {
    "orvit": {"params_m": 148.0, "gflops": None},
    "orvit+transformer_fusion": {"params_m": 242.0, "gflops": None},
    "orvit+mambavl": {"params_m": 157.0, "gflops": None},
}

# Implementation details as published in the paper: none of the body text was retrievable.
RECIPE = {
    "optimizer": None,
    "base_lr": None,
    "peak_lr": None,
    "final_lr": None,
    "ssm_block_lr": None,
    "schedule": None,
    "warmup_epochs": None,
    "weight_decay": None,
    "batch_size": None,
    "epochs": None,
    "d_model": None,
    "d_state": None,
    "expand": None,
    "depth": None,
    "text_encoder": None,
    "max_question_length": None,
    "question_llm": None,
    "question_prompt": None,
    "masking": None,
    "frames_per_clip": None,
    "anticipation_setup": None,
}

# --- Authors' README "Model Zoo" (EK100, top-1 %, as printed in README.md) -------------------
# "| AVION_B | EK100 | Action recognition | 70.9 | 61.1 | 49.1 |" etc. The README labels the
# anticipation row with verb@1/noun@1/action@1 columns; whether those are recall@5 is not said.
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
# From configs/ORViT/*.yaml and slowfast/models/video_model_builder.py, fusion.py,
# slowfast/datasets/epickitchens.py at commit 601b789d.
CODE_RECIPE = {
    # AVION ViT-L recognition: EK_ORVIT_MF_HR_AVION_cosine.yaml (ViT-B file identical except
    # EMBED_DIM 768, LOSS_FUNC soft_cross_entropy, MODEL_NAME AVION_B).
    "avion_recognition": {
        "optimizer": "sgd",  # OPTIMIZING_METHOD: sgd, MOMENTUM: 0.9
        "base_lr": 1e-3,  # BASE_LR: 1e-3 (ORVIT_BASE_LR: 1e-3)
        "mamba_lr": 3e-3,  # MAMBA_BASE_LR: 3e-3
        "schedule": "cosine",  # LR_POLICY: cosine
        "warmup_epochs": 2.0,  # WARMUP_EPOCHS: 2.0
        "warmup_start_lr": 3e-6,  # WARMUP_START_LR: 3e-6
        "final_lr": 3e-5,  # COSINE_END_LR: 3e-5
        "weight_decay": 4e-5,  # WEIGHT_DECAY: 4e-5
        "batch_size": 64,  # TRAIN.BATCH_SIZE: 64 (NUM_GPUS: 8)
        "epochs": 100,  # MAX_EPOCH: 100
        "mixed_precision": True,
        "mixup": True,  # MIXUP.ENABLE: True
        "randaug": "rand-m7-n4-mstd0.5-inc1",  # AUG.AA_TYPE
        "loss": "label_smoothing_cross_entropy",  # ViT-B config: soft_cross_entropy
        "d_model": {"vit_l": 1024, "vit_b": 768},  # MF.EMBED_DIM
        "test_views": {"ensemble": 1, "spatial_crops": 1},
    },
    # AVION-backbone anticipation: EK_ORVIT_MF_HR_AVION_ANT_cosine.yaml
    "avion_anticipation": {
        "optimizer": "sgd",
        "base_lr": 1e-3,
        "mamba_lr": 9e-3,  # MAMBA_BASE_LR: 9e-3
        "schedule": "cosine",
        "warmup_epochs": 2.0,
        "warmup_start_lr": 3e-6,
        "final_lr": 3e-5,
        "weight_decay": 4e-5,
        "batch_size": 64,
        "epochs": 100,
        "mixup": False,
        "anticipation": True,  # EPICKITCHENS.ANTICIPATION: True
    },
    # ORViT-Motionformer anticipation: EK_ORVIT_MF_HR_ANT.yaml
    "orvit_anticipation": {
        "optimizer": "adamw",  # OPTIMIZING_METHOD: adamw
        "base_lr": 2e-5,  # BASE_LR: 2e-5
        "orvit_lr": 1e-5,  # ORVIT_BASE_LR: 1e-5
        "mamba_lr": 2e-4,  # MAMBA_BASE_LR: 2e-4
        "schedule": "steps_with_relative_lrs",  # LRS [1, 0.1, 0.01] at STEPS [0, 19, 40]
        "warmup_epochs": 0.0,
        "weight_decay": 5e-2,
        "batch_size": 24,
        "epochs": 50,
        "init_checkpoint": "checkpoint_epoch_00050.pyth",  # resumes from a recognition run
        "d_model": 768,
        "orvit_layers": (1, 6, 10),  # ORVIT.LAYERS, O: 4 objects
        "test_views": {"ensemble": 1, "spatial_crops": 3},
        "anticipation": True,
    },
    # Shared across configs
    "frames_per_clip": 16,  # DATA.NUM_FRAMES: 16, SAMPLING_RATE: 4
    "crop_size": 224,  # TRAIN_CROP_SIZE / TEST_CROP_SIZE; TRAIN_JITTER_SCALES [384, 480]
    "num_classes": {"verb": 97, "noun": 300},
    # Fusion block (video_model_builder.py): two Mamba (v1 simple) blocks, one for video tokens,
    # one for text tokens, sharing one A_log parameter ("shared_A=self.A_log").
    "fusion": {
        "d_model": "backbone width (1024 ViT-L, 768 ViT-B/ORViT)",
        "d_state": 16,  # d_state = 16
        "d_conv": 4,
        "expand": 2,  # expand = 2
        "depth": 1,  # one mamba_video + one mamba_text block
        "shared": "A_log",  # A_log, no weight decay; S4D-real init log(arange(1, d_state+1))
        "readout": "mean over video tokens + mean over text tokens, per verb/noun head",
    },
    # Transformer-fusion baseline (fusion.py Fuser defaults): depth=6, num_heads=4,
    # mlp_ratio=4, dropout/attn/drop_path 0.1. MLP baseline: MLP(2*d -> 2*d -> d).
    "transformer_fusion_default": {"depth": 6, "heads": 4},
    "text_encoder": "FacebookAI/roberta-base",  # frozen; Mamba path uses only its embeddings
    "text_projection": "Linear(768,d) + ReLU + Linear(d,d) + ReLU + Linear(d,d)",
    "max_question_length": 40,  # tokenizer(..., padding="max_length", max_length=40)
    # Questions: per-clip 'verb_question' / 'noun_question' read from
    # EPIC_100_{train,validation}_actions_gpt_questions_clean.pkl (GPT-generated; model and
    # prompt not in the code). Masking (spaCy en_core_web_sm lemma match -> "<mask>"): the
    # NOUN question has the ground-truth VERB phrase masked, the VERB question has the
    # ground-truth NOUN phrase masked. Generic-question ablation strings in comments:
    # "What is the object in the video?" / "What action is performed using hands in the video?"
    "question_source": "EPIC_100_*_actions_gpt_questions_clean.pkl",
    "question_llm": None,  # not named in the code or README
}
