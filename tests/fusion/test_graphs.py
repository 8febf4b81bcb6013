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


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("schedule", ["warmup-cosine", "authors"])
def test_the_schedule_a_graph_reads_is_the_schedulers(monkeypatch, schedule: str) -> None:
    """The rates a graphed step sets itself (`_next_rates`, from the table `_write_schedule`
    writes) are the ones the scheduler computes, step for step, across table refills and
    eager steps; stepping the scheduler on the host leaves the rate tensors alone. Runs on
    the CPU: the same tensor operations the graph records."""
    from fusion import graphs

    monkeypatch.setattr(graphs, "SCHEDULE_STEPS", 3)
    config = TrainConfig(fusion="mlp", batch_size=4, epochs=3, warmup_epochs=1,
                         schedule=schedule, peak_lr=1e-3, ssm_peak_lr=3e-3,
                         head=HeadConfig(d_model=8))
    built = [build_training(config, {"video": 6}, {"num_verbs": 3, "num_nouns": 4}, 5,
                            torch.device("cpu")) for _ in range(2)]
    (_, optimizer, scheduler), (_, _, reference) = built
    step = GraphedTrainStep(*built[0], config, amp=False)
    groups = optimizer.param_groups
    assert len(groups) > 1
    for k in range(14):
        if k == 6:  # an eager step moves the scheduler and marks the table stale
            scheduler.step()
            step.schedule_used = graphs.SCHEDULE_STEPS
        elif step.schedule_used == graphs.SCHEDULE_STEPS:
            step._write_schedule()
        if k != 6:
            before = step.lrs.clone()
            step._next_rates()  # captured in the graph, after the update
            version = step.lrs._version
            step._step_scheduler()
            assert step.lrs._version == version  # no kernel wrote the rates
            step.schedule_used += 1
        reference.step()
        want = torch.tensor(reference.get_last_lr(), dtype=torch.float32)
        assert torch.equal(step.lrs, want), k
        assert scheduler.get_last_lr() == reference.get_last_lr()
        assert all(g["lr"] is t for g, t in zip(groups, step.lr, strict=True))
        if k != 6:
            assert not torch.equal(before, step.lrs)  # the schedule moves every step


@pytest.mark.gpu
@pytest.mark.parametrize(("fusion", "feed", "compiled"), [
    *[(f, feed, False) for f in ("mlp", "mamba", "transformer_6x4")
      for feed in ("batches", "row_batches")],
    ("mlp", "row_batches", True),  # --compile: head and loss compiled, then captured
])
def test_graphed_steps_equal_eager_steps(monkeypatch, fusion: str, feed: str,
                                         compiled: bool) -> None:
    """Eager steps on `batches` and graphed steps fed either gathered batches (copied into
    the graph's inputs) or `row_batches` (gathered inside the graph) train alike, at the
    same rates step for step (the graph's schedule table refilled every 4 steps); also
    with the head and the loss compiled (`compiled_label_loss`) inside the graph."""
    from fusion import graphs as graphs_module

    monkeypatch.setattr(graphs_module, "SCHEDULE_STEPS", 4)
    split = random_split()
    config = TrainConfig(fusion=fusion, batch_size=16, epochs=2, warmup_epochs=1,
                         peak_lr=1e-3, ssm_peak_lr=3e-3, head=HeadConfig(d_model=32))
    info = {"num_verbs": 5, "num_nouns": 7}
    steps = 7  # 100 clips / 16: six full batches and a last one of 4 (eager in both)
    losses, params, rates = {}, {}, {}
    for graphs in (False, True):
        torch.manual_seed(0)
        cfg = dataclasses.replace(config, cuda_graphs=graphs, compile=compiled and graphs)
        model, optimizer, scheduler = build_training(cfg, split.dims, info, steps,
                                                     torch.device("cuda"))
        if graphs:
            forward = torch.compile(model) if cfg.compile else model
            step = GraphedTrainStep(forward, optimizer, scheduler, cfg, amp=True,
                                    warmup_steps=2)
        else:
            def step(batch, model=model, optimizer=optimizer, scheduler=scheduler, cfg=cfg):
                return train_step(model, batch, optimizer, scheduler, cfg, amp=True)
        generator = torch.Generator().manual_seed(1)
        out, rates[graphs] = [], []
        batches = getattr(split, feed if graphs else "batches")
        for _ in range(2):  # two epochs: the graph is replayed across epochs
            for batch in batches(16, generator):
                out.append(float(step(batch)))
                rates[graphs].append([float(g["lr"]) for g in optimizer.param_groups])
        if graphs:
            assert step.graph is not None and not step.disabled
            assert (step.source is split) == (feed == "row_batches")
        losses[graphs] = out
        params[graphs] = copy.deepcopy(model.state_dict())
        last_lr = float(scheduler.get_last_lr()[0])
        assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(last_lr)
    assert len(losses[True]) == 2 * steps
    torch.testing.assert_close(torch.tensor(rates[True]), torch.tensor(rates[False]),
                               rtol=1e-6, atol=0)  # float32 tensors vs floats
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
