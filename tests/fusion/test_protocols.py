"""fusion.protocols: each protocol's head, initial A and Δ, the authors' LR curve step by step,
running-max selection, how protocol + preset + flags combine, and a short CPU run of each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fusion.heads import build_head
from fusion.optim import build_authors_scheduler, build_optimizer, param_groups
from fusion.profile import main as profile_main
from fusion.protocols import AUTHORS, CLEAN, PAPER, PROTOCOLS
from fusion.train import (
    PRESETS,
    HeadConfig,
    TrainConfig,
    deviations,
    load_checkpoint,
    mix_video,
    parse_config,
    protocol_config,
    selected_metrics,
    soft_cross_entropy,
    train,
)
from tests.fusion.test_train import TEXT_STORE, make_dataset

ROOT = Path(__file__).resolve().parents[2]
D = 768
DIMS = {"video": D, "verb_question": D, "noun_question": D}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def head(protocol, dims=DIMS, **kwargs):
    torch.manual_seed(0)
    return build_head("mamba", modality_dims=dims, **protocol.head_options("mamba"), **kwargs)


def test_authors_fusion_size_is_the_audits_rerun(capsys):
    """Their two mixers, text projection, shared A_log and classifiers: 9.59 M at D = 768."""
    profile_main(["--fusion", "mamba", "--protocol", "authors", "--video-dim", "768",
                  "--text-dim", "768", "--json"])
    params = json.loads(capsys.readouterr().out)["params"]
    inner, dt_rank = 2 * D, D // 16
    mixer = (D * 2 * inner + inner * 4 + inner + inner * (dt_rank + 32) + dt_rank * inner + inner
             + inner + inner * D)  # in_proj, conv1d (+bias), x_proj, dt_proj (+bias), D, out_proj
    text_projection = D * D + 2 * (D * D + D)
    classifiers = (D + 1) * 97 + (D + 1) * 300
    assert params == 2 * mixer + text_projection + 2 * D * 16 + classifiers == 9_593_485


def test_each_protocol_builds_its_structure():
    authors, paper, clean = head(AUTHORS), head(PAPER), head(CLEAN)
    names = {p: {n for n, _ in h.named_parameters()} for p, h in
             (("authors", authors), ("paper", paper), ("clean", clean))}
    assert not any("norm" in n or "proj_conv" in n or n.startswith("proj.video")
                   for n in names["authors"])
    assert {"proj.question.0.weight", "proj.question.4.weight"} <= names["authors"]
    assert authors.proj["question"][0].bias is None  # Linear(768, D, bias=False)
    assert {"proj.video.net.0.weight", "proj_conv.video.weight"} <= names["paper"]
    assert not any("norm" in n for n in names["paper"])
    assert {"norms.video.0.weight", "norm_f.question.weight"} <= names["clean"]
    assert authors.A_log.shape == (1, 2 * D, 16)  # one A_log shared by video and text
    counts = {p: sum(x.numel() for x in h.parameters())
              for p, h in (("paper", paper), ("clean", clean))}
    assert counts == {"paper": 10_190_989, "clean": 10_197_133}


def test_authors_verb_logits_ignore_the_noun_question():
    dims = {"video": 16, "verb_question": 8, "noun_question": 8}
    model = head(AUTHORS, dims, d_model=16, d_state=4).eval()
    inputs = {m: torch.randn(3, 5, w) for m, w in dims.items()}
    changed = dict(inputs, noun_question=torch.randn(3, 5, 8))
    torch.testing.assert_close(model(inputs)["verb"], model(changed)["verb"])
    assert not torch.allclose(model(inputs)["noun"], model(changed)["noun"])
    summed = head(CLEAN, dims, d_model=16, d_state=4).eval()  # clean sums all three
    assert not torch.allclose(summed(inputs)["verb"], summed(changed)["verb"])


def test_authors_pads_enter_the_mean_clean_ignores_them():
    dims = {"video": 16, "verb_question": 8, "noun_question": 8}
    inputs = {m: torch.randn(2, 6, w) for m, w in dims.items()}
    masks = {m: torch.arange(6).expand(2, 6) < 4 for m in dims}
    pads = {m: torch.where(masks[m][..., None], x, torch.randn_like(x))
            for m, x in inputs.items()}
    authors = head(AUTHORS, dims, d_model=16, d_state=4).eval()
    clean = head(CLEAN, dims, d_model=16, d_state=4).eval()
    torch.testing.assert_close(clean(inputs, masks)["verb"], clean(pads, masks)["verb"])
    assert not torch.allclose(authors(inputs, masks)["verb"], authors(pads, masks)["verb"])


def test_initial_A_and_delta_per_protocol():
    bound = math.sqrt(6 / (2 * D + 16))  # xavier_uniform of a (2D, 16) table: ±0.062
    for protocol in PROTOCOLS.values():
        model = head(protocol)
        A = -torch.exp(model.A_log.detach())
        delta = F.softplus(model.mixers["video"][0].dt_proj.bias.detach())
        if protocol is AUTHORS:
            assert -math.exp(bound) <= A.min() and A.max() <= -math.exp(-bound)
            assert A.std() > 0.01  # random, not a constant -1
            torch.testing.assert_close(delta, torch.full_like(delta, math.log(2.0)))
            weight = model.mixers["video"][0].in_proj.weight
            assert abs(weight.std().item() - 0.02) < 0.002  # trunc_normal(0.02)
        else:
            torch.testing.assert_close(A[0, 0], -torch.arange(1.0, 17.0))  # S4D-real
            assert delta.min() >= 1e-3 and delta.max() <= 0.1


def test_authors_learning_rate_curve_step_by_step():
    model = head(AUTHORS, {"video": 32, "verb_question": 16, "noun_question": 16},
                 d_model=32, d_state=4)
    groups = param_groups(model, AUTHORS.peak_lr, AUTHORS.ssm_peak_lr, AUTHORS.weight_decay,
                          model.ssm_prefixes, AUTHORS.decay_exclusions, AUTHORS.a_log_lr)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"rest", "ssm"}  # two groups, both decayed 4e-5
    assert all(g["weight_decay"] == 4e-5 for g in groups)
    assert any(p is model.A_log for p in by_name["rest"]["params"])  # A_log at the base LR
    mixer = model.mixers["video"][0]
    assert {id(mixer.D), id(mixer.dt_proj.bias)} <= {id(p) for p in by_name["ssm"]["params"]}
    optimizer = build_optimizer(groups, "sgd")
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    scheduler = build_authors_scheduler(optimizer, steps_per_epoch=10, epochs=100,
                                        warmup_epochs=2, start_lr=3e-6, base_lr=1e-3,
                                        end_lr=3e-5)
    curve = []
    for _ in range(1001):
        curve.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    expected = {  # epoch: (base group, Mamba group); epoch = step / 10
        0.0: (3e-6, 3e-6),
        1.0: (5.010214816e-4, 5.010214816e-4),  # both ramp to cosine(2, base LR)
        1.9: (9.492408151e-4, 9.492408151e-4),
        2.0: (9.990429633e-4, 2.997069692e-3),  # warmup over: the Mamba group jumps
        50.0: (5.15e-4, 1.515e-3),  # cosine from epoch 0, half-way
        100.0: (3e-5, 3e-5),
    }
    for epoch, (base, mamba) in expected.items():
        lrs = curve[round(epoch * 10)]
        assert lrs["rest"] == pytest.approx(base, rel=1e-7), epoch
        assert lrs["ssm"] == pytest.approx(mamba, rel=1e-7), epoch
    ramp = [c["ssm"] for c in curve[:20]]
    steps = [b - a for a, b in zip(ramp, ramp[1:], strict=False)]
    assert steps == pytest.approx([steps[0]] * 19)  # linear ramp
    assert all(c["ssm"] >= d["ssm"] for c, d in zip(curve[20:], curve[21:], strict=False))


def test_running_max_takes_each_metric_over_epochs():
    times = {"epoch_seconds": 3.0, "val_seconds": 1.0, "lr": 0.1}  # the best epoch's, not maxima
    history = [{"epoch": 1, "train_loss": 2.0, "epoch_seconds": 9.0, "val_seconds": 4.0,
                "lr": 0.2, "verb_top1": 0.5, "noun_top1": 0.2, "action_top1": 0.10},
               {"epoch": 2, "train_loss": 1.5, **times, "verb_top1": 0.4, "noun_top1": 0.3,
                "action_top1": 0.12},
               {"epoch": 3, "train_loss": 1.0, "epoch_seconds": 5.0, "val_seconds": 2.0,
                "lr": 0.3, "verb_top1": 0.45, "noun_top1": 0.25, "action_top1": 0.11}]
    assert selected_metrics(history, 1, "best-epoch") == history[1]
    maxima = selected_metrics(history, 1, "running-max")
    assert maxima == {"epoch": 2, "train_loss": 1.5, **times, "verb_top1": 0.5,
                      "noun_top1": 0.3, "action_top1": 0.12}


def test_clean_is_todays_defaults_and_flags_override_a_protocol():
    assert protocol_config("clean") == TrainConfig()
    assert parse_config([]) == TrainConfig()
    authors = parse_config(["--protocol", "authors"])
    assert (authors.optimizer, authors.batch_size, authors.schedule, authors.selection) == (
        "sgd", 64, "authors", "running-max")
    assert deviations(authors) == {}
    ablation = parse_config(["--protocol", "authors", "--optimizer", "adamw",
                             "--head.route-questions", "False"])
    assert ablation.optimizer == "adamw" and ablation.peak_lr == AUTHORS.peak_lr
    assert deviations(ablation) == {"optimizer": "adamw", "head.route_questions": False}
    # the preset's own changes win over the protocol, flags over both
    demo = parse_config(["--preset", "demo", "--protocol", "paper", "--epochs", "3"])
    assert (demo.batch_size, demo.label_smoothing, demo.epochs) == (32, 0.0, 3)
    assert (demo.optimizer, demo.weight_decay, demo.protocol) == ("sgd", 4e-5, "paper")
    assert demo.video_store == PRESETS["demo"].video_store


def test_mixup_mixes_the_video_only_and_soft_targets_reduce_to_cross_entropy():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(soft_cross_entropy(logits, labels, 1.0, 0.1),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    mixed_loss = soft_cross_entropy(logits, labels, 0.3, 0.0)
    expected = (0.3 * F.cross_entropy(logits, labels, reduction="none")
                + 0.7 * F.cross_entropy(logits, labels.flip(0), reduction="none")).mean()
    torch.testing.assert_close(mixed_loss, expected)
    from fusion.data import Batch

    batch = Batch(torch.arange(4), {"video": torch.randn(4, 3, 2),
                                    "verb_question": torch.randn(4, 5, 2)},
                  {}, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    mixed, lam = mix_video(batch, 0.8)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(mixed.inputs["video"], lam * batch.inputs["video"]
                               + (1 - lam) * batch.inputs["video"].flip(0))
    assert mixed.inputs["verb_question"] is batch.inputs["verb_question"]


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_short_cpu_training_under_each_protocol(name, tmp_path):
    data = make_dataset(tmp_path / "demo")
    # the video is 16 wide: so is the authors' head, which has no video projection
    config = protocol_config(name, data=data, epochs=3, batch_size=8, device="cpu",
                             out=tmp_path / "runs", track=False, head=HeadConfig(d_state=4),
                             text_store=TEXT_STORE)  # the tiny dataset has one text store
    result = train(config)
    folder = Path(result["folder"])
    history = pd.read_csv(folder / "history.csv")
    assert len(history) == 3 and history["train_loss"].map(math.isfinite).all()
    if name == "authors":  # each reported metric is its own maximum over the epochs
        assert result["best"]["verb_top1"] == history["verb_top1"].max()
        assert result["best"]["noun_top1"] == history["noun_top1"].max()
    else:
        best = history.loc[history["action_top1"].idxmax()]
        assert result["best"]["verb_top1"] == best["verb_top1"]
    groups = load_checkpoint(folder / "last.pt")["optimizer"]["param_groups"]
    assert all(g.get("nesterov", False) == (PROTOCOLS[name].optimizer == "sgd") for g in groups)


def test_run_folders_from_before_protocols_keep_resuming():
    """A fingerprint without the new fields at their defaults is no change; another protocol is."""
    from features.config import to_dict
    from fusion.train import fingerprint, setting_changes

    new_fields = {"protocol", "optimizer", "schedule", "decay_exclusions", "a_log_lr",
                  "mixup_alpha", "precision", "selection", "head.block", "head.init"}
    old = {k: v for k, v in fingerprint(to_dict(TrainConfig())).items() if k not in new_fields}
    assert setting_changes(old, fingerprint(to_dict(TrainConfig()))) == {}
    changed = setting_changes(old, fingerprint(to_dict(protocol_config("authors"))))
    assert {"protocol", "optimizer", "peak_lr"} <= set(changed)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["authors", "paper", "clean"])
def test_short_cuda_training_under_each_protocol(name, tmp_path):
    """On CUDA: the authors' fp16 + GradScaler + SGD path, and the others' bf16 + CUDA graphs."""
    data = make_dataset(tmp_path / "demo")
    config = protocol_config(name, data=data, epochs=3, batch_size=8, device="cuda",
                             out=tmp_path / "runs", track=False, head=HeadConfig(d_state=4),
                             text_store=TEXT_STORE)
    result = train(config)
    history = pd.read_csv(Path(result["folder"]) / "history.csv")
    assert len(history) == 3 and history["train_loss"].map(math.isfinite).all()


@pytest.mark.parametrize("protocol", [AUTHORS, PAPER, CLEAN])
def test_text_readout_follows_the_head_built(protocol):
    """The readout a run's text store holds is the baseline readout exactly when the head
    built is one of the authors' baselines (`protocol_head`), the protocol's readout otherwise."""
    from fusion.heads import protocol_head
    from fusion.protocols import BASELINES

    for fusion in ("mamba", "mlp", "transformer_6x4", "transformer_12x12", "mlp_authors"):
        try:
            built = protocol_head(protocol.name, fusion)[0]
        except ValueError:  # not trainable under this protocol (`mlp_authors` outside clean)
            continue
        baseline = built in BASELINES.values()
        assert protocol.builds_baseline(fusion) == baseline, fusion
        assert protocol.text_readout_for(fusion) == (
            protocol.baseline_text_readout if baseline else protocol.text_readout)
    assert AUTHORS.text_readout_for("mlp") == "pooler"
    assert AUTHORS.text_readout_for("mamba") == "embeddings"
