"""fusion.heads: one interface, padding never changes outputs, every head learns on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusion.heads.mamba as mamba_module
from fusion.heads import build_head, left_align, list_heads
from fusion.optim import param_groups

DIMS = {"video": 24, "verb_question": 16, "noun_question": 16}
SMALL = {  # tiny widths so the whole file runs in seconds on 2 cores
    "mamba": {"d_model": 24, "d_state": 4, "expand": 2},
    "mlp": {"d_model": 24},
    "transformer_6x4": {"d_model": 24, "max_len": 64},
    "transformer_12x12": {"d_model": 24, "max_len": 64},
}
HEADS = sorted(SMALL)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and lose much on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_head(name: str, dims=DIMS, **kwargs):
    torch.manual_seed(0)
    return build_head(name, modality_dims=dims, num_verbs=5, num_nouns=7, **SMALL[name], **kwargs)


def test_registry():
    assert list_heads() == sorted([*HEADS, "mlp_authors", "transformer_authors_6x4",
                                   "transformer_authors_12x12"])
    with pytest.raises(KeyError, match="unknown fusion head"):
        build_head("lstm", modality_dims=DIMS)
    with pytest.raises(TypeError, match="fixes"):
        build_head("transformer_6x4", modality_dims=DIMS, depth=3)


@pytest.mark.parametrize("name", HEADS)
def test_interface_and_defaults(name):
    head = build_head(name, modality_dims={"video": 48, "verb_question": 16, "noun_question": 16},
                      **({"max_len": 64} if "transformer" in name else {}))
    inputs = {"video": torch.randn(3, 5, 48), "verb_question": torch.randn(3, 7, 16),
              "noun_question": torch.randn(3, 6, 16)}
    out = head(inputs, None)
    assert out["verb"].shape == (3, 97) and out["noun"].shape == (3, 300)
    ones = {k: torch.ones(v.shape[:2], dtype=torch.bool) for k, v in inputs.items()}
    head.eval()
    torch.testing.assert_close(head(inputs, ones)["verb"], head(inputs)["verb"])
    with pytest.raises(KeyError, match="missing modalities"):
        head({"video": inputs["video"]})
    with pytest.raises(ValueError, match="expected"):
        head(dict(inputs, video=torch.randn(3, 5, 47)))


def test_left_align():
    x = torch.arange(6.0).view(1, 6, 1)
    mask = torch.tensor([[False, True, False, True, True, False]])
    y, m = left_align(x, mask)
    assert y.flatten().tolist() == [1, 3, 4, 0, 0, 0]
    assert m.flatten().tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("name", HEADS)
def test_logits_are_float32_under_autocast(name):
    """bf16 logits would tie (8 significant bits) and slow the official EK100 ranking; the
    classifiers run in float32 whatever autocast does to the rest of the head."""
    head = small_head(name)
    inputs = {k: torch.randn(2, 4, d) for k, d in DIMS.items()}
    with torch.autocast("cpu", torch.bfloat16):
        out = head(inputs)
    assert out["verb"].dtype == out["noun"].dtype == torch.float32


def random_padded_batch(batch: int, seed: int, holes: bool):
    """Rows with random real lengths; padding holds garbage, at the end or (holes) anywhere."""
    g = torch.Generator().manual_seed(seed)
    rows, inputs, masks = [], {}, {}
    lengths = {"video": 6, "verb_question": 9, "noun_question": 5}
    for name, dim in DIMS.items():
        max_len = lengths[name] + 3
        x = torch.randn(batch, max_len, dim, generator=g, dtype=torch.float64) * 3
        real = torch.randint(1, max_len + 1, (batch,), generator=g)
        mask = torch.zeros(batch, max_len, dtype=torch.bool)
        for i in range(batch):
            order = torch.randperm(max_len, generator=g) if holes else torch.arange(max_len)
            mask[i, order[: real[i]]] = True
        inputs[name], masks[name] = x, mask
    for i in range(batch):
        rows.append({name: inputs[name][i : i + 1, masks[name][i]] for name in DIMS})
    return inputs, masks, rows


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("holes", [False, True])
def test_padding_never_changes_outputs(name, holes):
    head = small_head(name).double().eval()
    inputs, masks, rows = random_padded_batch(4, seed=len(name) + holes, holes=holes)
    batched = head(inputs, masks)
    for i, row in enumerate(rows):  # each row alone, without any padding or mask
        alone = head(row)
        for key in ("verb", "noun"):
            torch.testing.assert_close(batched[key][i : i + 1], alone[key], rtol=1e-9, atol=1e-9)
    # more padding with other garbage changes nothing either
    wider = {k: torch.cat([v, torch.randn(v.shape[0], 4, v.shape[2], dtype=v.dtype)], 1)
             for k, v in inputs.items()}
    wider_masks = {k: F.pad(m, (0, 4)) for k, m in masks.items()}
    torch.testing.assert_close(head(wider, wider_masks)["verb"], batched["verb"],
                               rtol=1e-9, atol=1e-9)


def synthetic_task(n: int, seed: int):
    """Verb label: a prototype hidden in the video tokens and echoed by the verb question;
    noun label: a prototype in the noun question. Random lengths, right padding."""
    protos = torch.Generator().manual_seed(123)  # the same classes in every split
    verb_protos = torch.randn(5, DIMS["video"], generator=protos)
    noun_protos = torch.randn(7, DIMS["noun_question"], generator=protos)
    g = torch.Generator().manual_seed(seed)
    verb = torch.randint(0, 5, (n,), generator=g)
    noun = torch.randint(0, 7, (n,), generator=g)
    inputs = {name: torch.randn(n, 8, dim, generator=g) for name, dim in DIMS.items()}
    masks = {name: torch.arange(8)[None] < torch.randint(3, 9, (n, 1), generator=g)
             for name in DIMS}
    inputs["video"] = inputs["video"] + 1.5 * verb_protos[verb][:, None]
    inputs["verb_question"] = inputs["verb_question"] + 0.5 * verb_protos[verb][:, None, :16]
    inputs["noun_question"] = inputs["noun_question"] + 1.5 * noun_protos[noun][:, None]
    return inputs, masks, verb, noun


@pytest.mark.parametrize("name", HEADS)
def test_every_head_learns_a_tiny_task(name):
    torch.manual_seed(0)
    head = small_head(name, dropout=0.0)
    inputs, masks, verb, noun = synthetic_task(384, seed=1)
    test_inputs, test_masks, test_verb, test_noun = synthetic_task(256, seed=2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(40):
        index = torch.randperm(384)[:64]
        out = head({k: v[index] for k, v in inputs.items()},
                   {k: v[index] for k, v in masks.items()})
        loss = F.cross_entropy(out["verb"], verb[index]) + F.cross_entropy(out["noun"], noun[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        out = head(test_inputs, test_masks)
    verb_acc = (out["verb"].argmax(1) == test_verb).float().mean().item()
    noun_acc = (out["noun"].argmax(1) == test_noun).float().mean().item()
    assert verb_acc > 0.8 and noun_acc > 0.8, (verb_acc, noun_acc)  # chance: 0.2 and 0.14


def count_scans(monkeypatch):
    calls = []
    original = mamba_module.selective_scan

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "selective_scan", counting)
    return calls


def test_shared_A_is_one_parameter_and_one_scan_call(monkeypatch):
    head = small_head("mamba", depth=2)
    assert head.A_log.shape == (2, 48, 4)
    assert head.branches == ["video", "question"]  # the questions share one branch
    calls = count_scans(monkeypatch)
    inputs, masks, _, _ = synthetic_task(3, seed=0)
    out = head(inputs, masks)
    assert len(calls) == 2 and calls[0] == (9, 48, 8)  # video + 2 questions stacked, per layer
    # every modality's loss reaches the shared A
    for modality in DIMS:
        head.zero_grad()
        out = head({k: v if k == modality else v * 0 for k, v in inputs.items()}, masks)
        out["verb"].sum().backward()
        assert head.A_log.grad.abs().sum() > 0


def test_unshared_A_ablation(monkeypatch):
    head = small_head("mamba", shared_A=False, share_questions=False)
    assert head.A_log.shape == (3, 1, 48, 4)
    calls = count_scans(monkeypatch)
    inputs, masks, _, _ = synthetic_task(2, seed=0)
    head(inputs, masks)
    assert len(calls) == 3


def test_unshared_A_branches_learn_their_own_state_matrix():
    head = small_head("mamba", shared_A=False, depth=2)
    assert head.A_log.shape == (2, 2, 48, 4)  # (branch: video, question) x layer
    assert torch.equal(head.A_log[0], head.A_log[1])  # the same S4D start
    optimizer = torch.optim.AdamW(param_groups(head, 1e-3, 3e-3, 0.05, head.ssm_prefixes))
    inputs, masks, verb, noun = synthetic_task(8, seed=0)
    out = head(inputs, masks)
    (F.cross_entropy(out["verb"], verb) + F.cross_entropy(out["noun"], noun)).backward()
    optimizer.step()
    for layer in range(2):
        assert not torch.equal(head.A_log[0, layer], head.A_log[1, layer])


def test_route_questions_separates_verb_and_noun():
    head = small_head("mamba", route_questions=True).eval()
    inputs, masks, _, _ = synthetic_task(2, seed=0)
    changed = dict(inputs, noun_question=torch.randn_like(inputs["noun_question"]))
    torch.testing.assert_close(head(inputs, masks)["verb"], head(changed, masks)["verb"])
    assert not torch.allclose(head(inputs, masks)["noun"], head(changed, masks)["noun"])


def test_optimizer_groups_see_the_ssm_block():
    head = small_head("mamba")
    groups = {g["name"]: g for g in param_groups(head, 1e-3, 3e-3, 0.05, head.ssm_prefixes)}
    no_decay = {id(p) for p in groups["ssm-no_decay"]["params"]}
    assert id(head.A_log) in no_decay
    assert all(id(m.D) in no_decay for m in head.mixers["video"])
    assert {"ssm", "ssm-no_decay", "rest", "rest-no_decay"} == set(groups)


def test_scans_of_very_different_lengths_are_not_padded_together(monkeypatch):
    head = small_head("mamba")
    calls = count_scans(monkeypatch)
    inputs = {"video": torch.randn(2, 40, 24), "verb_question": torch.randn(2, 4, 16),
              "noun_question": torch.randn(2, 4, 16)}
    head(inputs)
    assert sorted(c[0] for c in calls) == [2, 4]  # questions (2 x 2 rows) and video apart


@pytest.mark.gpu
def test_mamba_head_backends_agree_on_gpu():
    from fusion.ssm import available_backends

    if "mamba_ssm" not in available_backends("cuda"):
        pytest.skip("mamba_ssm is not installed")
    head = small_head("mamba", depth=2).cuda()
    inputs, masks, verb, _ = synthetic_task(16, seed=0)
    inputs = {k: v.cuda() for k, v in inputs.items()}
    masks = {k: v.cuda() for k, v in masks.items()}
    results = {}
    for backend in ("torch", "mamba_ssm"):
        head.backend = backend
        head.zero_grad()
        out = head(inputs, masks)
        F.cross_entropy(out["verb"], verb.cuda()).backward()
        results[backend] = (out["verb"].detach(), head.A_log.grad.clone(),
                            head.mixers["video"][0].in_proj.weight.grad.clone())
    for torch_value, cuda_value in zip(results["torch"], results["mamba_ssm"], strict=True):
        torch.testing.assert_close(cuda_value, torch_value, rtol=1e-4, atol=1e-5)


def test_structure_options_are_checked():
    with pytest.raises(ValueError, match="no projection"):  # video 24 wide, head 16 wide
        build_head("mamba", modality_dims=DIMS, d_model=16, video_proj="none")
    with pytest.raises(ValueError, match="proj_kernel"):
        small_head("mamba", proj_kernel=2)
    with pytest.raises(ValueError, match="block"):
        small_head("mamba", block="postnorm")
    bare = small_head("mamba", block="bare", proj_kernel=0, text_proj="relu3")
    assert not any("norm" in n or "proj_conv" in n for n, _ in bare.named_parameters())
    inputs, masks, _, _ = synthetic_task(2, seed=0)
    assert bare(inputs, masks)["verb"].shape == (2, 5)


@pytest.mark.parametrize("use", ["both", "first", "second"])
def test_split_linear_equals_linear_then_split(use: str) -> None:
    """The Mamba layer's in_proj (`split_linear`): forward, input and weight gradients as
    `F.linear(x, w).split(...)`, also when only one half reaches the loss, and under bf16
    autocast in the dtypes `F.linear` gives (bf16 halves, a float32 weight gradient)."""
    from fusion.heads.mamba import split_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    w = torch.randn(12, 8, generator=g, requires_grad=True)
    weights = [torch.randn(3, 5, n, generator=g) for n in (7, 5)]

    def loss(halves):
        return sum((h * wt).sum() for i, (h, wt) in enumerate(zip(halves, weights, strict=True))
                   if use in ("both", ("first", "second")[i]))

    got = split_linear(x, w, 7)
    want = F.linear(x, w).split([7, 5], dim=-1)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(loss(got), [x, w])
    grads_ref = torch.autograd.grad(loss(want), [x, w])
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)
    with torch.autocast("cpu", torch.bfloat16):
        halves = split_linear(x, w, 7)
        ref = F.linear(x, w).split([7, 5], dim=-1)
    assert [h.dtype for h in halves] == [torch.bfloat16] * 2
    grads = torch.autograd.grad(loss([h.float() for h in halves]), [x, w])
    grads_ref = torch.autograd.grad(loss([h.float() for h in ref]), [x, w])
    for a, b in zip(grads, grads_ref, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_the_mamba_layers_in_proj_runs_through_split_linear(monkeypatch) -> None:
    """Each Mamba layer's in_proj is a `split_linear` call (the call site, not just the
    function: a lost call site once made a timed change a no-op)."""
    calls = []
    real = mamba_module.split_linear
    monkeypatch.setattr(mamba_module, "split_linear",
                        lambda *args: calls.append(args[1].shape) or real(*args))
    head = build_head("mamba", modality_dims={"video": 16, "verb_question": 12},
                      num_verbs=3, num_nouns=4, d_model=8, depth=2)
    x = {"video": torch.randn(2, 5, 16), "verb_question": torch.randn(2, 4, 12)}
    out = head(x)
    (out["verb"].sum() + out["noun"].sum()).backward()
    mixers = [m for m in head.modules() if isinstance(m, mamba_module.MambaMixer)]
    assert len(calls) == len(mixers) > 0
    assert all(shape == m.in_proj.weight.shape for shape, m in zip(calls, mixers, strict=True))
