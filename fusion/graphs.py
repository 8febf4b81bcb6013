"""The training step replayed as one CUDA graph: no per-kernel launch cost.

A fusion head is small, so its step is hundreds of small kernels: on the H100 the MLP head
launches 157 per step and keeps the GPU busy 12 % of the time, the Mamba head 458
(`benchmarks/results/profile_step.md`). The CPU cost of launching them, not the GPU work,
sets the epoch time. Capturing forward, backward, clipping and the AdamW update once and
replaying the graph for every full batch removes it.

What capture needs, and how it is met here:
- static shapes: full batches replay the graph and a smaller last batch runs eagerly
  (`fusion.train.train_step`). A batch's rows reach the graph one of two ways: a `Batch` is
  copied into fixed input tensors; `Rows` of a device-resident split
  (`FeatureSplit.row_batches`, what training passes) copy only their row indices, and the
  graph gathers the rows itself: each row is read once, not gathered and then copied
  again (issue 18);
- a capturable optimizer: AdamW is built with `capturable=True` (`build_training`), and each
  group's learning rate is a device tensor that the captured update reads. The graph also
  sets the next step's rates itself, from a table of the `LambdaLR` schedule's next
  `SCHEDULE_STEPS` values on the device; the scheduler is stepped on the host only. Stepping
  it on tensor rates would fill and clone each group's tensor: 8 small kernels a step
  outside the graph for the head's four groups (issue 18);
- warm-up before capture (cuBLAS handles, Triton compilation, lazy state): the first steps
  run eagerly on a side stream. They are ordinary training steps on real batches.

Eager and graphed steps compute the same thing; results differ only by float summation order.
If capture fails (an op that cannot be captured), a warning says so and training goes on
eagerly. Measured on the H100 (`benchmarks/results/train_epoch_graphs.md`, EK100 sizes):
the MLP head's epoch 3.9 s -> 1.2 s, the Mamba head's (triton scan) 10.6 s -> 6.6 s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import torch
from torch import Tensor

from fusion.data import Batch, FeatureSplit, Rows

if TYPE_CHECKING:
    from fusion.train import TrainConfig

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _on_side_stream(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run `fn` (a warm-up step) on a fresh side stream, after the current stream's queued
    work and before its later work.

    Why a side stream: capture runs on a non-default stream, and PyTorch's CUDA-graph recipe
    warms up on one too, so that lazy set-up (cuBLAS workspaces, Triton compilation,
    allocator state) is done before capture and not on the legacy default stream, which
    synchronises with every other stream.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    return out


class GraphedTrainStep:
    """Callable like `train_step(model, batch, ...)`; replays a captured step on full batches."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig,
                 amp: bool, warmup_steps: int = 3) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.config, self.amp = config, amp
        self.warmup_left = warmup_steps
        self.disabled = False
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: Batch | None = None
        self.static_loss: Tensor | None = None
        self.source: FeatureSplit | None = None  # the split the graph gathers rows of
        self.static_index: Tensor | None = None
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise TypeError("GraphedTrainStep follows a LambdaLR schedule inside its graph; "
                            f"got {type(scheduler).__name__}")
        groups = optimizer.param_groups
        self.lrs = torch.tensor([float(g["lr"]) for g in groups], device=_device(groups[0]))
        self.lr = list(self.lrs)  # each group's rate: a view of `lrs`
        for group, tensor in zip(groups, self.lr, strict=True):
            group["lr"] = tensor
        # the rates of the scheduler's next steps (`_write_schedule`) and the graph's column
        self.schedule = torch.zeros(len(groups), SCHEDULE_STEPS + 1, device=self.lrs.device)
        self.schedule_at = torch.zeros(1, dtype=torch.long, device=self.lrs.device)
        self.schedule_used = SCHEDULE_STEPS  # replays since the table was written: stale

    def _eager(self, batch: Batch) -> Tensor:
        from fusion.train import train_step

        loss = train_step(self.model, batch, self.optimizer, self.scheduler, self.config,
                          self.amp)  # the scheduler fills the rate tensors
        self._sync_lr()
        self.schedule_used = SCHEDULE_STEPS  # the schedule moved outside the graph
        return loss

    def _sync_lr(self) -> None:
        """Put the scheduler's rate into the tensors the graph reads (no host sync)."""
        for group, tensor in zip(self.optimizer.param_groups, self.lr, strict=True):
            if group["lr"] is not tensor:  # schedulers that assign a float
                tensor.fill_(float(group["lr"]))
                group["lr"] = tensor

    def _write_schedule(self) -> None:
        """The rates of the scheduler's current and next `SCHEDULE_STEPS` steps, as
        `LambdaLR.get_lr` computes them, for the graph to read."""
        first = self.scheduler.last_epoch
        rates = [[base * factor(first + k) for k in range(SCHEDULE_STEPS + 1)]
                 for base, factor in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas,
                                         strict=True)]
        self.schedule.copy_(torch.tensor(rates))
        self.schedule_at.zero_()
        self.schedule_used = 0

    def _next_rates(self) -> None:
        """Captured after the update: the schedule's next step, its rates into `lrs`."""
        self.schedule_at.add_(1)
        self.lrs.copy_(self.schedule.index_select(1, self.schedule_at).squeeze(1))

    def _step_scheduler(self) -> None:
        """`scheduler.step()` without its kernels: it sees float rates (which it replaces
        and records), the groups get their tensors back, which the graph has already set."""
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        self.scheduler.step()
        for group, tensor in zip(self.optimizer.param_groups, self.lr, strict=True):
            group["lr"] = tensor

    def _capture(self, batch: Batch | Rows) -> None:
        from fusion.train import apply_gradients, step_loss

        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        if isinstance(batch, Rows):
            self.source, self.static_index = batch.split, batch.index.clone()
        else:
            self.static_batch = Batch(batch.index.clone(),
                                      {k: v.clone() for k, v in batch.inputs.items()},
                                      {k: v.clone() for k, v in batch.masks.items()},
                                      batch.verb.clone(), batch.noun.clone())
        with torch.cuda.graph(self.graph):
            if self.source is not None:  # the gather is part of the graph
                self.static_batch = self.source.batch(self.static_index)
            loss = step_loss(self.model, self.static_batch, self.config, self.amp)
            apply_gradients(self.model, loss, self.optimizer, self.config)
            self.static_loss = loss.detach()
            self._next_rates()

    def _replays(self, batch: Batch | Rows) -> bool:
        """The captured graph can take this batch: `Rows` of the split it gathers from, or a
        `Batch` when it was captured on one (the other case runs eagerly, not wrongly)."""
        if self.source is not None:
            return isinstance(batch, Rows) and batch.split is self.source
        return isinstance(batch, Batch)

    def __call__(self, batch: Batch | Rows) -> Tensor:
        if len(batch.index) != self.config.batch_size:
            return self._eager(_gathered(batch))  # the last, smaller batch of an epoch
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return _on_side_stream(self._eager, _gathered(batch))
        if self.disabled or (self.graph is not None and not self._replays(batch)):
            return self._eager(_gathered(batch))
        if self.graph is None:
            try:
                self._capture(batch)
            except RuntimeError as error:  # an op that cannot be captured: train eagerly
                warnings.warn(f"CUDA graph capture failed ({error}); training without CUDA "
                              "graphs (--no-cuda-graphs silences this)", stacklevel=2)
                self.disabled, self.graph, self.source = True, None, None
                self.optimizer.zero_grad(set_to_none=True)
                return self._eager(_gathered(batch))
        if isinstance(batch, Rows):
            self.static_index.copy_(batch.index)
        else:
            static = self.static_batch
            for name, tensor in batch.inputs.items():
                static.inputs[name].copy_(tensor)
            for name, tensor in batch.masks.items():
                static.masks[name].copy_(tensor)
            static.verb.copy_(batch.verb)
            static.noun.copy_(batch.noun)
        if self.schedule_used == SCHEDULE_STEPS:
            self._write_schedule()
        self.graph.replay()
        self.schedule_used += 1
        self._step_scheduler()
        return self.static_loss.clone()


SCHEDULE_STEPS = 1024
"""Steps of the schedule a graphed training step reads from the device before the host
writes the next ones (a blocking copy; in practice once an EK100 epoch of 525 steps, after
its last, eager batch)."""


def _gathered(batch: Batch | Rows) -> Batch:
    return batch.gather() if isinstance(batch, Rows) else batch


def _device(group: dict) -> torch.device:
    return group["params"][0].device


class GraphedForward:
    """Callable like `model(inputs, masks)` for evaluation (no grad, autocast): batches of
    `batch_size` rows replay one captured forward; other sizes run eagerly.

    Why: validation runs every epoch, and its forward passes are launch-bound like the
    training step (the Mamba head's eager forward is hundreds of small kernels). Same rules
    as `GraphedTrainStep`: warm-up batches first, fixed input tensors copied into, outputs
    cloned out (the next replay overwrites them), and a capture failure warns and runs
    eagerly. The graph reads the live parameters, so it stays valid as training updates
    them; it records eval-mode kernels (`predict` calls `model.eval()` first).
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, amp: bool,
                 dtype: torch.dtype, warmup_batches: int = 2) -> None:
        self.model, self.batch_size, self.amp, self.dtype = model, batch_size, amp, dtype
        self.warmup_left = warmup_batches
        self.disabled = False
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: dict[str, Tensor] = {}
        self.static_masks: dict[str, Tensor] = {}
        self.static_out: dict[str, Tensor] = {}

    def _eager(self, inputs: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
        # the weight-cast cache off, as in the training step: a captured region must not
        # keep casts made outside it
        with torch.autocast("cuda", self.dtype, enabled=self.amp, cache_enabled=False):
            return self.model(inputs, masks)

    def _fits(self, inputs: dict[str, Tensor], masks: dict[str, Tensor]) -> bool:
        """The captured graph's tensors have these shapes and dtypes (or none is captured
        yet): a batch of other token lengths (a streamed split's) runs eagerly."""
        if self.graph is None:
            return True
        pairs = [(self.static_inputs.get(k), v) for k, v in inputs.items()]
        pairs += [(self.static_masks.get(k), v) for k, v in masks.items()]
        return len(pairs) == len(self.static_inputs) + len(self.static_masks) and all(
            s is not None and s.shape == v.shape and s.dtype == v.dtype for s, v in pairs)

    def _capture(self, inputs: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
        self.static_inputs = {k: v.clone() for k, v in inputs.items()}
        self.static_masks = {k: v.clone() for k, v in masks.items()}
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self._eager(self.static_inputs, self.static_masks)

    @torch.no_grad()
    def __call__(self, inputs: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
        rows = len(next(iter(inputs.values())))
        if rows != self.batch_size or self.disabled or not self._fits(inputs, masks):
            return self._eager(inputs, masks)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return _on_side_stream(self._eager, inputs, masks)
        if self.graph is None:
            try:
                self._capture(inputs, masks)
            except RuntimeError as error:
                warnings.warn(f"CUDA graph capture of the evaluation forward failed ({error}); "
                              "evaluating without CUDA graphs (--no-cuda-graphs silences "
                              "this)", stacklevel=2)
                self.disabled, self.graph = True, None
                return self._eager(inputs, masks)
        for name, tensor in inputs.items():
            self.static_inputs[name].copy_(tensor)
        for name, tensor in masks.items():
            self.static_masks[name].copy_(tensor)
        self.graph.replay()
        return {k: v.clone() for k, v in self.static_out.items()}
