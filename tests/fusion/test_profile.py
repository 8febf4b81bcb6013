"""fusion.profile: Table 4 parameter deltas at the paper's widths, and exact FLOP counts."""

from __future__ import annotations

import json

import pytest

from fusion.heads import build_head
from fusion.profile import main, profile_model
from fusion.ssm import scan_flops

PAPER = ["--video-dim", "768", "--text-dim", "768", "--video-len", "16", "--text-len", "64"]


def run(capsys, *args) -> dict:
    main([*args, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("fusion", "delta"), [("mamba", 9e6), ("transformer_12x12", 94e6)])
def test_table4_parameter_deltas(capsys, fusion, delta):
    """ORViT 148 M; MambaVL 157 M (+9 M); +Transformer fusion 242 M (+94 M): within 15 %."""
    result = run(capsys, "--fusion", fusion, *PAPER)
    assert abs(result["params_over_linear"] - delta) < 0.15 * delta
    assert abs(result["params"] - delta) < 0.15 * delta
    assert result["flops"] == result["flops_counter"] + result["flops_scan"] > 0


def test_mlp_flops_are_its_matrix_products(capsys):
    result = run(capsys, "--fusion", "mlp", *PAPER)
    macs = 3 * 768 * 1536 + 1536 * 768 + 768 * (97 + 300)  # concat -> 2d -> d -> classifiers
    assert result["flops"] == 2 * macs and result["flops_scan"] == 0


def test_mamba_scan_flops_are_counted(capsys):
    result = run(capsys, "--fusion", "mamba", *PAPER)
    # one call per layer: video padded to 32 and the two 32-token questions stacked (3 rows)
    assert result["flops_scan"] == scan_flops(3, 2 * 768, 32, 16)
    deeper = run(capsys, "--fusion", "mamba", *PAPER, "--depth", "2")
    assert deeper["flops_scan"] == 2 * result["flops_scan"]


def test_attention_is_counted_on_cpu(capsys):
    result = run(capsys, "--fusion", "transformer_6x4", "--video-dim", "64", "--text-dim", "32",
                 "--video-len", "4", "--text-len", "8")
    tokens, d = 4 + 8, 64
    linear = 2 * tokens * 6 * 12 * d * d  # qkv, output, MLP (ratio 4) per layer
    attention = 6 * 2 * 2 * tokens * tokens * d  # QK^T and AV per layer
    proj = 2 * (4 * (64 * d + d * d) + 8 * (32 * d + d * d))
    assert result["flops"] == linear + attention + proj + 2 * d * 397


def test_profile_model_takes_lengths_or_shapes():
    head = build_head("mlp", modality_dims={"video": 8, "questions": 4}, d_model=8)
    by_length = profile_model(head, {"video": 3, "questions": 5})
    by_shape = profile_model(head, {"video": (3, 8), "questions": [5, 4]})
    assert by_length == by_shape and by_length["params"] == sum(p.numel() for p in
                                                                head.parameters())
    assert head.training  # mode restored


@pytest.mark.parametrize(("protocol", "params"), [("authors", 9_593_485), ("paper", 10_190_989),
                                                  ("clean", 10_197_133)])
def test_protocol_heads_at_the_paper_widths(capsys, protocol, params):
    result = run(capsys, "--fusion", "mamba", "--protocol", protocol, *PAPER)
    assert (result["protocol"], result["params"]) == (protocol, params)


@pytest.mark.gpu
def test_a_cuda_mamba_head_counts_what_the_cpu_one_counts():
    """On CUDA the head's convolutions are Triton kernels, opaque to FlopCounterMode: the
    count runs the torch backend, so both devices give the same FLOPs; the backend is
    restored."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    head = build_head("mamba", modality_dims={"video": 64, "verb_question": 32,
                                              "noun_question": 32}, d_model=64)
    shapes = {"video": 16, "verb_question": 8, "noun_question": 8}
    cpu = profile_model(head, shapes)
    cuda = profile_model(head.cuda(), shapes)
    assert cuda == cpu and head.backend == "auto"
