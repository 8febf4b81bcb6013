"""CUDA-graph training steps compute what eager steps compute (GPU only)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fusion.data import FeatureSplit
from fusion.graphs import GraphedTrainStep
from fusion.train import HeadConfig, TrainConfig, build_training, train_step


def random_split(n: int = 100) -> FeatureSplit:
    g = torch.Generator("cuda").manual_seed(0)
    inputs = {"video": torch.randn(n, 8, 32, device="cuda", generator=g, dtype=torch.float16),
              "verb_question": torch.randn(n, 6, 16, device="cuda", generator=g,
                                           dtype=torch.float16)}
    masks = {"video": torch.ones(n, 8, dtype=torch.bool, device="cuda"),
             "verb_question": torch.arange(6, device="cuda")
             < torch.randint(1, 7, (n, 1), device="cuda", generator=g)}
    labels = [torch.randint(0, k, (n,), device="cuda", generator=g) for k in (5, 7)]
    return FeatureSplit([f"c{i}" for i in range(n)], inputs, masks, *labels)


@pytest.mark.gpu
@pytest.mark.parametrize("fusion", ["mlp", "mamba", "transformer_6x4"])
def test_graphed_steps_equal_eager_steps(fusion: str) -> None:
    split = random_split()
    config = TrainConfig(fusion=fusion, batch_size=16, epochs=2, warmup_epochs=1,
                         peak_lr=1e-3, ssm_peak_lr=3e-3, head=HeadConfig(d_model=32))
    info = {"num_verbs": 5, "num_nouns": 7}
    steps = 7  # 100 clips / 16: six full batches and a last one of 4 (eager in both)
    losses = {}
    params = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        cfg = dataclasses.replace(config, cuda_graphs=graphs)
        model, optimizer, scheduler = build_training(cfg, split.dims, info, steps,
                                                     torch.device("cuda"))
        if graphs:
            step = GraphedTrainStep(model, optimizer, scheduler, cfg, amp=True, warmup_steps=2)
        else:
            def step(batch, model=model, optimizer=optimizer, scheduler=scheduler, cfg=cfg):
                return train_step(model, batch, optimizer, scheduler, cfg, amp=True)
        generator = torch.Generator().manual_seed(1)
        out = []
        for _ in range(2):  # two epochs: the graph is replayed across epochs
            out += [float(step(batch)) for batch in split.batches(16, generator)]
        losses[graphs] = out
        params[graphs] = copy.deepcopy(model.state_dict())
        last_lr = float(scheduler.get_last_lr()[0])
        assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(last_lr)
    assert len(losses[True]) == 2 * steps
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]),
                               rtol=2e-2, atol=2e-2)
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name].float(), value.float(), rtol=5e-2,
                                   atol=5e-3, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("fusion", ["mlp", "mamba", "transformer_6x4"])
def test_graphed_evaluation_equals_eager_and_follows_the_weights(fusion: str) -> None:
    """predict with a replayed forward gives the eager scores (100 rows in batches of 32:
    warm-up, capture, replays and an eager last batch), also after the weights change."""
    from fusion.graphs import GraphedForward
    from fusion.train import predict

    split = random_split()
    config = TrainConfig(fusion=fusion, batch_size=16, head=HeadConfig(d_model=32))
    model, _, _ = build_training(config, split.dims, {"num_verbs": 5, "num_nouns": 7}, 7,
                                 torch.device("cuda"))
    graphed = GraphedForward(model, 32, amp=True, dtype=torch.bfloat16, warmup_batches=1)
    for _ in range(2):
        eager = predict(model, split, 16, amp=True)
        replayed = predict(model, split, 16, amp=True, graphed=graphed)
        assert graphed.graph is not None and not graphed.disabled
        for head in ("verb", "noun"):
            torch.testing.assert_close(torch.from_numpy(replayed[head]),
                                       torch.from_numpy(eager[head]), rtol=1e-2, atol=1e-2)
        with torch.no_grad():  # new weights: the captured graph must read them
            for p in model.parameters():
                p.mul_(1.5)
    # a full batch of other token lengths runs eagerly instead of failing the copy
    short = {k: v[:32, :4] for k, v in split.inputs.items()}
    masks = {k: v[:32, :4] for k, v in split.masks.items()}
    model.eval()
    with torch.autocast("cuda", torch.bfloat16):
        expected = model(short, masks)
    got = graphed(short, masks)
    torch.testing.assert_close(got["verb"], expected["verb"], rtol=1e-2, atol=1e-2)
