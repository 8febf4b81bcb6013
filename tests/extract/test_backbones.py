"""AVION video ViTs: registry, sizes, FLOPs, token granularities and checkpoint loading."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from extract.backbones import (
    TOKENS,
    CheckpointMismatchError,
    build_backbone,
    count_parameters,
    describe_backbone,
    list_backbones,
    load_avion_checkpoint,
    main,
    measure_flops,
    state_dict_sha256,
)
from features.safeload import UnsafePickleError
from tests.cli import one_error_line

REPO = Path(__file__).resolve().parents[2]

SMALL = {"num_frames": 4, "image_size": 32}  # vit-demo geometry shrunk: 2x2 patches, 4 frames


def small(seed: int = 0, **kw) -> torch.nn.Module:
    return build_backbone("vit-demo", seed=seed, **{**SMALL, **kw}).eval()


def clip(model, batch: int = 2) -> torch.Tensor:
    c = model.config
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, c.num_frames, c.image_size, c.image_size, generator=g)


def avion_checkpoint(model, path: Path, fmt: str = "finetuned") -> Path:
    """Save `model` in one of AVION's released layouts (DDP `module.` prefix included)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "finetuned":  # main_lavila_finetune_cls.py: VideoClassifier under DDP
        sd = {f"module.visual.{k}": v for k, v in state.items()}
        sd["module.fc_cls.weight"] = torch.randn(10, model.width)
        sd["module.fc_cls.bias"] = torch.zeros(10)
        # as saved by AVION@9763533 scripts/main_lavila_finetune_cls.py: `args` is the
        # argparse.Namespace, with `actions` a DataFrame and the act->verb/noun maps
        actions = pd.DataFrame.from_dict({"verb": [0, 1], "noun": [2, 3]})
        args = argparse.Namespace(model="CLIP_VITB16", clip_length=4, betas=(0.9, 0.999),
                                  mapping_act2v={0: 0, 1: 1}, actions=actions)
        opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))])
        obj = {"epoch": 1, "state_dict": sd, "optimizer": opt.state_dict(),
               "scaler": {"scale": 65536.0, "_growth_tracker": 0}, "best_acc1": 0.0,
               "args": args}
    elif fmt == "clip":  # dual encoder without flash-attn / fast conv1, plus text tower
        sd = {}
        for k, v in state.items():
            k = k.replace("attn.Wqkv.", "attn.in_proj_").replace("mlp.fc1.", "mlp.c_fc.")
            k = k.replace("mlp.fc2.", "mlp.c_proj.")
            if k == "conv1.weight":
                p = model.patch_size
                v = v.reshape(v.shape[0], 3, p, p)
            sd[f"module.visual.{k}"] = v
        sd["module.visual.image_projection"] = torch.randn(model.width, 8)
        sd["module.textual.positional_embedding"] = torch.randn(77, 16)
        sd["module.positional_embedding"] = torch.randn(77, 16)  # a root key of the text side
        sd["module.logit_scale"] = torch.tensor(1.0)
        obj = {"state_dict": sd}
    else:
        obj = state
    torch.save(obj, path)
    return path


def test_registry_lists_avion_and_small_models() -> None:
    assert {"vitb", "vitl", "vit-tiny", "vit-demo"} <= set(list_backbones())
    with pytest.raises(KeyError, match="vitb"):
        build_backbone("vit-huge")


def test_parameter_counts_on_meta_device() -> None:
    with torch.device("meta"):
        vitb = build_backbone("vitb")
        vitl = build_backbone("vitl")
    assert 85.0e6 < count_parameters(vitb) < 87.0e6  # 85.81 M
    assert 302.0e6 < count_parameters(vitl) < 305.0e6  # 303.2 M
    assert vitb.positional_embedding.shape == (197, 768)
    assert vitb.temporal_embedding.shape == (16, 768)
    assert vitl.positional_embedding.shape == (257, 1024)
    assert vitl.transformer.resblocks[0].attn.Wqkv.weight.shape == (3072, 1024)
    assert vitl.conv1.weight.shape == (1024, 3 * 14 * 14)


def test_flops_match_the_analytic_count() -> None:
    with torch.device("meta"):
        vitb = build_backbone("vitb")
    n, d = 1 + 16 * 196, 768
    per_block = 24 * n * d * d + 4 * n * n * d  # qkv, out, mlp + q@k, attn@v (2 FLOPs / MAC)
    patch_embed = 2 * 16 * 196 * (3 * 16 * 16) * d
    assert measure_flops(vitb) == 12 * per_block + patch_embed
    info = describe_backbone("vitl")
    assert 4000 < info["gflops_per_clip"] < 4300 and info["tokens_per_clip"] == 4097


def test_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--backbone", "vit-demo", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["backbone"] == "vit-demo" and out["params"] > 0 and out["gflops_per_clip"] > 0


def test_cli_json_names_the_preprocessing(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--backbone", "vitb", "--json"])
    out = json.loads(capsys.readouterr().out)
    pre = out["preprocess"]
    assert pre["mean"] == [108.3272985, 116.7460125, 104.09373615]  # AVION's, on 0-255
    assert pre["std"] == [68.5005327, 66.6321579, 70.32316305]
    assert (pre["frames"], pre["size"], pre["resize_method"], pre["timeline_fps"]) == (
        16, 224, "fused", 30.0)
    assert "avion_finetune_cls_lavila_vitb_best.pt" in out["checkpoint"]
    main(["--backbone", "vit-demo", "--json"])
    demo = json.loads(capsys.readouterr().out)
    assert demo["preprocess"]["name"] == "ours-v1" and demo["checkpoint"] is None


def test_token_granularities() -> None:
    model = small()
    x = clip(model)
    with torch.no_grad():
        cls, frame, patch, whole = (model.forward_features(x, t) for t in TOKENS)
    d, t, p = model.width, 4, 4
    assert cls.shape == (2, 1, d) and frame.shape == (2, t, d) and patch.shape == (2, t * p, d)
    torch.testing.assert_close(frame, patch.reshape(2, t, p, d).mean(2))
    torch.testing.assert_close(whole, torch.cat([cls, patch], dim=1))  # the whole sequence
    for tokens in TOKENS:
        assert model.num_tokens(tokens) == model.forward_features(x, tokens).shape[1]
    with pytest.raises(ValueError, match="tokens"):
        model.forward_features(x, "pooled")
    with pytest.raises(ValueError, match="expected input"):
        model(x[:, :, :2])


def test_seeded_random_init_is_reproducible() -> None:
    assert state_dict_sha256(small(seed=3)) == state_dict_sha256(small(seed=3))
    assert state_dict_sha256(small(seed=3)) != state_dict_sha256(small(seed=4))


def test_temporal_embedding_distinguishes_frames() -> None:
    """Joint space-time attention with a temporal embedding: frame order changes features."""
    model = small()
    with torch.no_grad():
        model.temporal_embedding.normal_(std=0.5)
        x = clip(model, batch=1)
        a = model(x, "frame")
        b = model(x.flip(2), "frame").flip(1)
    assert not torch.allclose(a, b, atol=1e-4)


def test_attention_layout_matches_multihead_attention() -> None:
    """`Wqkv` packs q, k, v like `nn.MultiheadAttention.in_proj_weight` (the renamed key)."""
    model = small()
    block = model.transformer.resblocks[0]
    mha = nn.MultiheadAttention(model.width, 2, batch_first=True)
    with torch.no_grad():
        block.attn.Wqkv.weight.copy_(mha.in_proj_weight)
        block.attn.Wqkv.bias.copy_(mha.in_proj_bias)
        block.attn.out_proj.load_state_dict(mha.out_proj.state_dict())
        x = torch.randn(2, 9, model.width)
        torch.testing.assert_close(block.attn(x), mha(x, x, x, need_weights=False)[0])


def test_patch_embedding_equals_avion_conv1() -> None:
    model = small()
    x = clip(model, batch=1)
    p = model.patch_size
    weight = model.conv1.weight.reshape(model.width, 3, p, p)
    with torch.no_grad():
        frames = x.permute(0, 2, 1, 3, 4).reshape(-1, 3, 32, 32)  # AVION's non-fast path
        ref = F.conv2d(frames, weight, stride=p).flatten(2).transpose(1, 2).reshape(1, -1, 128)
        tokens = model.embed(x)[:, 1:]
        pos = model.positional_embedding[1:].repeat(4, 1)
        pos = pos + model.temporal_embedding.repeat_interleave(4, 0)
    torch.testing.assert_close(tokens - pos, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["finetuned", "clip", "bare"])
def test_avion_checkpoint_round_trip(tmp_path: Path, fmt: str) -> None:
    source = small(seed=1)
    path = avion_checkpoint(source, tmp_path / "ckpt.pt", fmt)
    target = small(seed=2)
    report = load_avion_checkpoint(target, path)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert target.load_report is report and not report.missing and not report.unexpected
    assert not report.pickle_fallback  # AVION's `args` Namespace loads without pickle
    expected_ignored = {
        "finetuned": {"fc_cls.weight", "fc_cls.bias"},
        "clip": {"image_projection", "textual.positional_embedding", "positional_embedding"},
        "bare": set(),
    }[fmt]
    assert expected_ignored <= set(report.ignored)
    x = clip(source)
    with torch.no_grad():
        for tokens in TOKENS:
            assert torch.equal(source(x, tokens), target(x, tokens))
    built = build_backbone("vit-demo", checkpoint=path, **SMALL).eval()
    assert built.load_report.sha256 == report.sha256
    assert state_dict_sha256(built) == state_dict_sha256(source)


def test_mismatched_checkpoint_names_the_keys(tmp_path: Path) -> None:
    deeper = build_backbone("vit-demo", depth=3, **SMALL)
    path = avion_checkpoint(deeper, tmp_path / "deep.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_avion_checkpoint(small(), path)
    message = str(info.value)
    assert str(path) in message and "unexpected in checkpoint (12)" in message
    assert "transformer.resblocks.2.attn.Wqkv.weight" in message

    wider = build_backbone("vit-demo", width=64, heads=2, **SMALL)
    path = avion_checkpoint(wider, tmp_path / "wide.pt")
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_avion_checkpoint(small(), path)

    shallow = small()
    path = avion_checkpoint(shallow, tmp_path / "shallow.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing from checkpoint \(12\)"):
        load_avion_checkpoint(build_backbone("vit-demo", depth=3, **SMALL), path)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_avion_checkpoint(shallow, tmp_path / "nowhere.pt")


def test_checkpoint_embeddings_are_interpolated(tmp_path: Path) -> None:
    source = build_backbone("vit-demo", num_frames=8, image_size=64)  # 8 frames, 4x4 grid
    path = avion_checkpoint(source, tmp_path / "big.pt")
    target = small()  # 4 frames, 2x2 grid
    report = load_avion_checkpoint(target, path)
    assert len(report.interpolated) == 2
    assert target.temporal_embedding.shape == (4, 128)
    assert target.positional_embedding.shape == (5, 128)
    torch.testing.assert_close(target.positional_embedding[0], source.positional_embedding[0])
    # linear interpolation 8 -> 4 frames averages neighbouring pairs
    pairs = source.temporal_embedding.detach().reshape(4, 2, 128).mean(1)
    torch.testing.assert_close(target.temporal_embedding.detach(), pairs)


def avion_reference_cls(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """AVION's non-flash VisionTransformer forward (Conv2d, LND nn.MultiheadAttention math)."""
    b, c, t, h, w = x.shape
    weight = sd["conv1.weight"]  # 4-D, as in CLIP checkpoints
    d, p = weight.shape[0], weight.shape[-1]
    f = F.conv2d(x.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w), weight, stride=p)
    f = f.flatten(2).transpose(2, 1).reshape(b, -1, d)
    f = torch.cat([sd["class_embedding"] + torch.zeros(b, 1, d), f], dim=1)
    pos, temporal = sd["positional_embedding"], sd["temporal_embedding"]
    tiled = pos[1:].repeat(t, 1) + temporal.repeat_interleave(pos.shape[0] - 1, 0)
    f = f + torch.cat([pos[:1], tiled], dim=0)

    def ln(z: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(z, (d,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    f = ln(f, "ln_pre").permute(1, 0, 2)  # NLD -> LND
    for i in range(sum(k.endswith("ln_1.weight") for k in sd)):
        r = f"transformer.resblocks.{i}."
        z = ln(f, r + "ln_1")
        f = (
            f
            + F.multi_head_attention_forward(
                z,
                z,
                z,
                d,
                heads,
                sd[r + "attn.in_proj_weight"],
                sd[r + "attn.in_proj_bias"],
                None,
                None,
                False,
                0.0,
                sd[r + "attn.out_proj.weight"],
                sd[r + "attn.out_proj.bias"],
                training=False,
                need_weights=False,
            )[0]
        )
        z = F.linear(ln(f, r + "ln_2"), sd[r + "mlp.c_fc.weight"], sd[r + "mlp.c_fc.bias"])
        f = f + F.linear(F.gelu(z), sd[r + "mlp.c_proj.weight"], sd[r + "mlp.c_proj.bias"])
    return ln(f.permute(1, 0, 2)[:, 0], "ln_post")


def test_matches_avion_reference_forward(tmp_path: Path) -> None:
    """A CLIP-layout checkpoint gives the class token AVION's own forward computes."""
    source = small(seed=5)
    with torch.no_grad():
        source.temporal_embedding.normal_(std=0.1)
    path = avion_checkpoint(source, tmp_path / "clip.pt", "clip")
    sd = {
        k.removeprefix("module.visual."): v
        for k, v in torch.load(path)["state_dict"].items()
        if k.startswith("module.visual.")
    }
    model = small(seed=6)
    load_avion_checkpoint(model, path)
    x = clip(model)
    with torch.no_grad():
        ref = avion_reference_cls(sd, x, heads=2)
        torch.testing.assert_close(model(x, "cls")[:, 0], ref, atol=1e-5, rtol=1e-5)


class Payload:
    """Unpickling this creates `path`: the harmless stand-in for code in a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def evil_checkpoint(model, path: Path, marker: Path) -> Path:
    """A valid AVION checkpoint whose `args` also carries a payload."""
    avion_checkpoint(model, path)
    obj = torch.load(path, weights_only=False)
    obj["args"].payload = Payload(marker)
    torch.save(obj, path)
    return path


def test_checkpoint_payload_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = evil_checkpoint(small(), tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafePickleError, match=r"refused.*builtins.getattr.*--trust-pickle"):
        load_avion_checkpoint(small(), path)
    assert not marker.exists()


def test_trusted_checkpoint_is_fully_unpickled_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = small(seed=1)
    path = avion_checkpoint(source, tmp_path / "ckpt.pt")
    obj = torch.load(path, weights_only=False)
    obj["args"].output_dir = Path("runs")  # legitimate, but not on the allow-list
    torch.save(obj, path)
    with pytest.raises(UnsafePickleError, match="PosixPath"):
        load_avion_checkpoint(small(), path)
    target = small(seed=2)
    report = load_avion_checkpoint(target, path, trust_pickle=True)
    assert report.pickle_fallback and state_dict_sha256(target) == state_dict_sha256(source)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "PosixPath" in warning[0]


def extract_video(tiny_ek100: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m extract video --checkpoint`: the checkpoint is read before any video."""
    args = ["video", "--annotations", str(tiny_ek100), "--videos", str(tiny_ek100 / "none"),
            "--backbone", "vit-demo", "--num-frames", "4", "--size", "32", "--workers", "0",
            "--out", str(checkpoint.with_suffix(".zarr")), "--checkpoint", str(checkpoint),
            "--no-progress", *extra]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "extract", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MAMBAVL_DEBUG": ""})


def test_cli_refuses_a_checkpoint_payload(tiny_ek100: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = evil_checkpoint(small(), tmp_path / "evil.pt", marker)
    result = extract_video(tiny_ek100, path)
    lines = [one_error_line(result)]
    assert str(path) in lines[0] and "--trust-pickle" in lines[0]
    assert not marker.exists()


def test_cli_loads_avion_checkpoints_safely_and_trusted_ones_with_a_warning(
    tiny_ek100: Path, tmp_path: Path
) -> None:
    path = avion_checkpoint(small(), tmp_path / "ckpt.pt")
    result = extract_video(tiny_ek100, path)  # AVION's layout: no flag, no warning
    assert "video file not found" in result.stderr and "warning:" not in result.stderr
    obj = torch.load(path, weights_only=False)
    obj["args"].output_dir = Path("runs")  # legitimate, but not on the allow-list
    path = tmp_path / "trusted.pt"
    torch.save(obj, path)
    result = extract_video(tiny_ek100, path, "--trust-pickle")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(path) in warnings[0] and "PosixPath" in warnings[0]
    assert "video file not found" in result.stderr  # past the checkpoint, on to the videos
