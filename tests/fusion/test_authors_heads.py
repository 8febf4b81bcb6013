"""The authors' Table 3 baselines (fusion.heads.authors): sizes at D = 768, one pass per
question, what each reads, their initialisation, and `--fusion mlp` under `--protocol authors`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fusion.heads import build_head, protocol_head
from fusion.heads.authors import AuthorsFuser
from fusion.heads.base import HeadConfigError
from fusion.profile import main as profile_main
from fusion.train import HeadConfig, protocol_config, train
from tests.cli import one_error_line
from tests.fusion.test_train import TEXT_STORE, make_dataset

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("mlp_authors", "transformer_authors_6x4", "transformer_authors_12x12")
D = 768
TEXT_PROJ = D * D + 2 * (D * D + D)  # Linear(768, D, bias=False), ReLU, Linear, ReLU, Linear
CLASSIFIERS = (D + 1) * (97 + 300)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fuser_params(depth: int) -> int:
    block = 3 * D * D + (D * D + D) + 2 * 2 * D + (D * 4 * D + 4 * D) + (4 * D * D + D)
    return depth * block + 2 * 5000 * D + 4 * D  # tables, CLS and type tokens


@pytest.mark.parametrize(("fusion", "params"), [
    ("mlp", (2 * D * 2 * D + 2 * D) + (2 * D * D + D) + TEXT_PROJ + CLASSIFIERS),
    ("transformer_6x4", fuser_params(6) + TEXT_PROJ + CLASSIFIERS),
    ("transformer_12x12", fuser_params(12) + TEXT_PROJ + CLASSIFIERS),
])
@pytest.mark.parametrize("protocol", ["authors", "paper"])
def test_sizes_at_d768(capsys, fusion, params, protocol):
    """MLP 5.62 M, Fuser 6x4 52.27 M, 12x12 94.79 M: Table 4's +94 M is the 12x12 Fuser."""
    profile_main(["--fusion", fusion, "--protocol", protocol, "--video-dim", "768",
                  "--text-dim", "768", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["head"] == protocol_head(protocol, fusion)[0]
    assert result["params"] == params
    if fusion == "transformer_12x12":
        assert result["params"] == 94_786_189 and abs(result["params"] - 94e6) < 0.01 * 94e6


def test_protocols_pick_the_heads():
    assert protocol_head("authors", "mlp") == ("mlp_authors", {"init": "authors"})
    assert protocol_head("paper", "transformer_12x12") == ("transformer_authors_12x12",
                                                           {"init": "mamba"})
    assert protocol_head("clean", "transformer_6x4") == ("transformer_6x4", {})
    assert protocol_head("authors", "mamba")[0] == "mamba"


def tiny(name: str, **kwargs):
    torch.manual_seed(0)
    dims = {"video": 24, "verb_question": 8, "noun_question": 8}  # 12x12: 24 / 12
    return build_head(name, modality_dims=dims, num_verbs=5, num_nouns=7, **kwargs).eval()


def clip(batch: int = 3) -> tuple[dict, dict]:
    torch.manual_seed(1)
    inputs = {"video": torch.randn(batch, 4, 24), "verb_question": torch.randn(batch, 6, 8),
              "noun_question": torch.randn(batch, 6, 8)}
    masks = {q: torch.arange(6) < torch.tensor([[3], [6], [2]])[:batch]
             for q in ("verb_question", "noun_question")}
    return inputs, masks


@pytest.mark.parametrize("name", NAMES)
def test_one_pass_per_question(name):
    """head0 sees video + verb question only, head1 video + noun question only."""
    model = tiny(name)
    inputs, masks = clip()
    out = model(inputs, masks)
    assert out["verb"].shape == (3, 5) and out["noun"].shape == (3, 7)
    other_noun = {**inputs, "noun_question": torch.randn(3, 6, 8)}
    changed = model(other_noun, masks)
    torch.testing.assert_close(changed["verb"], out["verb"])
    assert not torch.equal(changed["noun"], out["noun"])
    other_verb = model({**inputs, "verb_question": torch.randn(3, 6, 8)}, masks)
    torch.testing.assert_close(other_verb["noun"], out["noun"])
    assert not torch.equal(other_verb["verb"], out["verb"])


@pytest.mark.parametrize("name", NAMES)
def test_reads_the_video_cls_and_the_first_question_token(name):
    model = tiny(name)
    inputs, masks = clip()
    out = model(inputs, masks)
    later = {k: v.clone() for k, v in inputs.items()}
    for key in later:
        later[key][:, 1:] = torch.randn_like(later[key][:, 1:])  # all but token 0
    for key, value in model(later, masks).items():
        torch.testing.assert_close(value, out[key])
    video = {**inputs, "video": inputs["video"].clone()}
    video["video"][:, 0] += 1.0
    assert not torch.equal(model(video, masks)["verb"], out["verb"])


def test_mean_pooling_reads_the_real_question_tokens_only():
    model = tiny("mlp_authors", text_pool="mean")
    inputs, masks = clip()
    out = model(inputs, masks)
    pads = {k: v.clone() for k, v in inputs.items()}
    pads["verb_question"][~masks["verb_question"]] = 9.0
    torch.testing.assert_close(model(pads, masks)["verb"], out["verb"])
    inputs["verb_question"][:, 1] += 1.0  # a real token of every row
    assert not torch.equal(model(inputs, masks)["verb"], out["verb"])


def test_fuser_structure():
    model = tiny("transformer_authors_6x4")
    assert isinstance(model, AuthorsFuser) and len(model.blocks) == 6
    assert all(b.qkv.bias is None and b.num_heads == 4 for b in model.blocks)
    assert [b.drop_path for b in model.blocks] == pytest.approx([0, 0.02, 0.04, 0.06, 0.08, 0.1])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 12 and all(n.eps == 1e-6 for n in norms)  # none after the blocks
    assert model.pos_embed_video.shape == model.pos_embed_text.shape == (1, 5000, 24)
    assert len(tiny("transformer_authors_12x12").blocks) == 12
    with pytest.raises(TypeError, match="fixes"):
        tiny("transformer_authors_6x4", depth=2)


def test_initialisation_authors_vs_module_own():
    """authors: their model-wide re-init makes the (1, 5000, D) tables xavier-uniform, i.e.
    within sqrt(6 / (5000 D + D)); otherwise the Fuser's own trunc_normal(0.02) stays."""
    torch.manual_seed(0)
    dims = {"video": D, "verb_question": D, "noun_question": D}
    authors = build_head("transformer_authors_6x4", modality_dims=dims, init="authors")
    own = build_head("transformer_authors_6x4", modality_dims=dims, init="mamba")
    bound = math.sqrt(6 / (5000 * D + D))
    assert authors.pos_embed_video.abs().max() <= bound
    assert own.pos_embed_video.std().item() == pytest.approx(0.02, rel=0.05)
    for model in (authors, own):
        assert all(not m.bias.any() for m in model.blocks.modules()
                   if isinstance(m, torch.nn.Linear) and m.bias is not None)
    # the classifiers and txt_proj: trunc_normal(0.02) with zero bias only under authors
    assert not authors.verb_head.bias.any() and own.verb_head.bias.any()
    assert authors.txt_proj[2].weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_width_is_the_videos():
    with pytest.raises(HeadConfigError, match="--head.d-model 24"):
        tiny("mlp_authors", d_model=32)
    assert tiny("mlp_authors", d_model=24).d_model == 24
    with pytest.raises(HeadConfigError, match="noun_question"):
        build_head("mlp_authors", modality_dims={"video": 16, "verb_question": 8})


def test_short_cpu_training_under_authors_mlp(tmp_path):
    """`fusion.train --protocol authors --fusion mlp` trains the authors' MLP with their
    recipe (SGD, running-max selection) and names its folder after the protocol."""
    data = make_dataset(tmp_path / "demo")
    config = protocol_config("authors", fusion="mlp", data=data, text_store=TEXT_STORE,
                             epochs=3, batch_size=8, device="cpu", out=tmp_path / "runs",
                             track=False)
    result = train(config)
    folder = Path(result["folder"])
    assert folder.name == "mlp-demo-recognition-authors-s0"
    history = pd.read_csv(folder / "history.csv")
    assert len(history) == 3 and history["train_loss"].map(math.isfinite).all()
    assert result["best"]["verb_top1"] == history["verb_top1"].max()
    weights = torch.load(folder / "last.pt", weights_only=True)["model"]
    assert {"mlp.0.weight", "txt_proj.0.weight", "verb_head.weight"} <= set(weights)
    assert weights["mlp.0.weight"].shape == (32, 32)  # MLP(2D -> 2D) at the video width 16


def test_authors_baseline_width_error_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "demo")
    result = subprocess.run(
        [sys.executable, "-m", "fusion.train", "--protocol", "authors", "--fusion", "mlp",
         "--data", str(data), "--device", "cpu", "--out", str(tmp_path / "runs"),
         "--text-store", TEXT_STORE, "--epochs", "1", "--no-track", "--head.d-model", "32"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "--head.d-model 16" in one_error_line(result)


def test_clean_keeps_our_own_baseline():
    config = protocol_config("clean", fusion="mlp", head=HeadConfig(d_model=8))
    from fusion.train import head_choice

    assert head_choice(config) == ("mlp", {"d_model": 8})


def test_authors_baselines_read_the_pooler_store_mamba_the_embeddings(tmp_path):
    """Under `authors`, `--fusion mlp` opens the store `extract text` writes with the
    protocol's options for it (RoBERTa's pooler output, one token per question) and trains on
    it; the Mamba head looks for the embedding-layer store instead."""
    from extract.questions import QuestionsConfig
    from extract.questions import generate as generate_questions
    from extract.run import (
        TextConfig,
        TinyRobertaConfig,
        build_tiny_roberta,
        extract_text,
        protocol_text_options,
    )
    from features.store import StoreError
    from fusion.data import open_stores
    from fusion.protocols import AUTHORS

    data = make_dataset(tmp_path / "demo")
    model = build_tiny_roberta(TinyRobertaConfig(out=tmp_path / "tiny-roberta"))
    options = protocol_text_options(AUTHORS, "mlp")
    assert options["readout"] == "pooler"
    for split in ("train", "validation"):
        questions = tmp_path / f"{split}.jsonl"
        generate_questions(QuestionsConfig(
            annotations=data / f"annotations/EPIC_100_{split}.csv", out=questions))
        assert extract_text(TextConfig(
            questions=questions, text_model=str(model), annotations=data / "annotations",
            split=split, root=data / "features", dataset="demo", device="cpu", threads=1,
            progress=False, **options)) == 0
    config = protocol_config("authors", fusion="mlp", data=data, epochs=1, batch_size=8,
                             device="cpu", out=tmp_path / "runs", track=False)
    text = open_stores(config, "train")["text"]
    assert text.path.name == "text-tiny-roberta-template-paper-pooler-authorsrandom-s0-len40-" \
                             "nomask.zarr"
    assert text.manifest["readout"] == "pooler" and text.arrays["verb_tokens"].row_shape == (1, 32)
    result = train(config)
    assert math.isfinite(pd.read_csv(Path(result["folder"]) / "history.csv")["train_loss"][0])
    mamba = protocol_config("authors", fusion="mamba", data=data, device="cpu")
    with pytest.raises(StoreError, match="text-tiny-roberta-template-paper-emb-authorsrandom"):
        open_stores(mamba, "train")
