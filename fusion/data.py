"""Training data on the device: a split's features as tensors, shuffled and batched there.

EK100-sized frame tokens fit in GPU memory (67,217 x 16 x 1024 fp16 is 2.2 GB), so a split
is loaded once and every epoch is index arithmetic on the GPU: no DataLoader, no host copy
per step. Shuffling uses an explicit `torch.Generator`, whose state goes into checkpoints
so a resumed run sees the same batches as an uninterrupted one.

A split too large for the device (`--stream auto` decides from free GPU memory, or
`always`) is streamed instead (`StreamedSplit`): windows of whole store shards are read from
the memory-mapped Zarr shards by a prefetching thread, in a shuffled window order, rows
shuffled within each window, and each batch is copied to the device. Same interface, same
generator, so resume stays exact.

Only rows that are valid in every store of a split are trained and scored: rows that
failed extraction (zeros, with an error in the store) are left out and counted, one stderr
line per split. The train and validation stores are checked against each other (modalities,
row shapes, extractor) before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from features.annotations import split_path
from features.errors import HarnessError
from features.store import (
    FeatureStore,
    StoreError,
    check_aligned,
    differences,
    identity,
    store_path,
)
from fusion.evaluate import Reference, load_reference

if TYPE_CHECKING:
    from fusion.train import TrainConfig


@dataclass
class Batch:
    index: Tensor
    inputs: dict[str, Tensor]
    masks: dict[str, Tensor]
    verb: Tensor
    noun: Tensor


@dataclass
class FeatureSplit:
    """Aligned per-clip features of every modality, with labels (-1 where unknown)."""

    narration_ids: list[str]
    inputs: dict[str, Tensor]
    masks: dict[str, Tensor]
    verb: Tensor
    noun: Tensor

    def __post_init__(self) -> None:
        n = len(self.narration_ids)
        for name, tensor in [*self.inputs.items(), *self.masks.items()]:
            if tensor.shape[0] != n:
                raise ValueError(f"modality {name!r} has {tensor.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.narration_ids)

    @property
    def dims(self) -> dict[str, int]:
        return {name: int(t.shape[-1]) for name, t in self.inputs.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """Per-clip (L, D) of each modality (FLOP counting)."""
        return {name: (int(t.shape[1]), int(t.shape[2])) for name, t in self.inputs.items()}

    def rows(self, index: Tensor) -> FeatureSplit:
        """The rows `index` as a split of their own (narration ids kept)."""
        return FeatureSplit([self.narration_ids[i] for i in index.tolist()],
                            {k: v[index] for k, v in self.inputs.items()},
                            {k: v[index] for k, v in self.masks.items()},
                            self.verb[index], self.noun[index])

    def as_batch(self) -> Batch:
        """All rows in file order as one batch of the split's own tensors (no copy)."""
        return Batch(torch.arange(len(self), device=self.verb.device), self.inputs,
                     self.masks, self.verb, self.noun)

    def batch(self, index: Tensor) -> Batch:
        return Batch(
            index,
            {k: gather_rows(v, index) for k, v in self.inputs.items()},
            {k: gather_rows(v, index) for k, v in self.masks.items()},
            self.verb[index],
            self.noun[index],
        )

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Batches in a random order when `generator` is given, else in file order.

        Each batch is a slice (a view) of rows gathered `GATHER_BATCHES` batches at a time, or
        in file order of the split itself: no kernel per batch. A gather per batch was a
        small kernel per tensor in every training step, outside its CUDA graph (issue 18).
        The batches are the same either way, and the same as `row_batches`."""
        order, stop = self._order(batch_size, generator, drop_last)
        if order is None:
            groups = [self.as_batch()]
        else:
            step = batch_size * GATHER_BATCHES
            groups = (self.batch(order[first : min(first + step, stop)])
                      for first in range(0, stop, step))
        for group in groups:
            rows = min(len(group.index), stop)
            for start in range(0, rows, batch_size):
                yield _rows_slice(group, start, min(start + batch_size, rows))

    def row_batches(self, batch_size: int, generator: torch.Generator | None = None,
                    drop_last: bool = False) -> Iterator[Rows]:
        """The batches of `batches` (the same generator draws, the same rows in the same
        order), as row indices not yet gathered: a CUDA-graphed training step gathers them
        inside its graph (`fusion.graphs.GraphedTrainStep`), reading each row once instead
        of gathering it into a group of batches and copying it again into the graph's
        inputs (issue 18)."""
        order, stop = self._order(batch_size, generator, drop_last)
        if order is None:
            order = torch.arange(len(self), device=self.verb.device)
        for start in range(0, stop, batch_size):
            yield Rows(self, order[start : start + batch_size])

    def _order(self, batch_size: int, generator: torch.Generator | None, drop_last: bool
               ) -> tuple[Tensor | None, int]:
        """The shuffled row order (None: file order) and the number of rows used."""
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        if generator is None:
            return None, stop
        return torch.randperm(len(self), generator=generator).to(self.verb.device), stop


@dataclass
class Rows:
    """Rows `index` of `split`, not gathered yet (`FeatureSplit.row_batches`)."""

    split: FeatureSplit
    index: Tensor

    def gather(self) -> Batch:
        return self.split.batch(self.index)


def gather_rows(tensor: Tensor, index: Tensor) -> Tensor:
    """`tensor[index]` along the first axis, moving each row as 8-byte words where its bytes
    allow: a quarter of the index arithmetic of 2-byte elements (bf16 tokens), or an eighth
    of bool masks', for the same bytes."""
    row_elements = math.prod(tensor.shape[1:])
    if tensor.dim() < 2 or not tensor.is_contiguous() or row_elements * tensor.element_size() % 8:
        return tensor[index]
    words = tensor.view(len(tensor), row_elements).view(torch.int64)
    return words[index].view(tensor.dtype).view(len(index), *tensor.shape[1:])


GATHER_BATCHES = 16
"""Batches gathered at once by `FeatureSplit.batches` (EK100 sizes: 16 x 17 MB on the GPU)."""


def _rows_slice(batch: Batch, start: int, stop: int) -> Batch:
    """Rows start:stop of `batch`, as views."""
    return Batch(batch.index[start:stop],
                 {k: v[start:stop] for k, v in batch.inputs.items()},
                 {k: v[start:stop] for k, v in batch.masks.items()},
                 batch.verb[start:stop], batch.noun[start:stop])


DATASET_NAMES = {"demo": "synthetic-demo"}
"""Store dataset folder -> the name runs are tagged with (table captions print it)."""


def video_store_name(config: TrainConfig) -> str:
    """`<backbone>` (`<backbone>-anticipation` for anticipation), as `python -m extract video`."""
    if config.video_store:
        return config.video_store
    return config.backbone + ("-anticipation" if config.task == "anticipation" else "")


def text_store_name(config: TrainConfig) -> str:
    """`<text_model>-<generator>-<mask><suffix>` as `python -m extract text` names the store
    of the protocol's text choices for the run's head (`extract.run.protocol_text_options`;
    `clean`: no suffix; `authors`: the embedding layer for the Mamba head, the pooler output
    for the authors' baselines).

    Anticipation reads questions of the `predictions` generator (the clip is not seen yet).
    """
    from extract.run import protocol_text_options, text_suffix
    from fusion.protocols import get_protocol

    if config.text_store:
        return config.text_store
    generator = "predictions" if config.task == "anticipation" else "template"
    suffix = text_suffix(**protocol_text_options(get_protocol(config.protocol), config.fusion))
    return f"{config.text_model}-{generator}-{config.question_mask}{suffix}"


def _aligned(reference: Reference, ids: np.ndarray, store: Path) -> Reference:
    """The reference's per-segment arrays in the store's row order; clear error on a clip
    the annotations lack."""
    row = {narration_id: i for i, narration_id in enumerate(reference.narration_id)}
    missing = [n for n in ids if n not in row]
    if missing:
        raise ValueError(f"{store}: {len(missing)} clip(s) not in the annotations "
                         f"(first {missing[0]!r}); extract from the same annotation folder")
    index = np.fromiter((row[n] for n in ids), dtype=np.int64, count=len(ids))
    return dataclasses.replace(
        reference, narration_id=reference.narration_id[index],
        verb_labels=reference.verb_labels[index], noun_labels=reference.noun_labels[index],
        participant_ids=reference.participant_ids[index])


def features_used(config: TrainConfig) -> str:
    """What the head sees: `video`, `questions` or `video+questions` (the runs' `features`
    tag, which the reports' information-sources table reads); neither is refused."""
    used = [name for name, value in (("video", config.video), ("questions", config.questions))
            if value != "none"]
    if not used:
        raise HarnessError("--video none with --questions none leaves the head no input: "
                           "keep the video (drop --video none) or the questions")
    return "+".join(used)


def open_stores(config: TrainConfig, split: str) -> dict[str, FeatureStore]:
    """The split's video store and/or text store (`features_used`), opened: cheap, no data.
    A questions-only run (`--video none`) never opens a video store."""
    root = config.data / "features"
    dataset = config.dataset or config.data.name
    features = features_used(config)
    paths = {}
    if "video" in features:
        paths["video"] = store_path(root, dataset, split, "video", video_store_name(config))
    if "questions" in features:
        paths["text"] = store_path(root, dataset, split, "text", text_store_name(config))
    for kind, path in paths.items():
        if not path.exists():
            what = "make extract" if kind == "video" else "make embed-text"
            raise StoreError(f"{path}: no {kind} feature store; run `{what}` for split "
                             f"{split!r} first (or pass --{kind}-store NAME)")
    stores = {kind: FeatureStore(path) for kind, path in paths.items()}
    for store in stores.values():
        store.require_complete()  # unwritten or damaged shards: refused before any work
    return stores


def check_task(config: TrainConfig, stores: dict[str, FeatureStore]) -> None:
    """Refuse to train a task on a video store of the other task's clips (an anticipation run
    on the action itself would learn recognition and report it as anticipation), and on one
    that does not say which (`clip.task`, written by `extract` and `features.import --task`;
    an import made before `--task` existed could hold either)."""
    video = stores.get("video")
    if video is None:  # a questions-only run
        return
    clip = video.manifest.get("clip")
    task = clip.get("task") if isinstance(clip, dict) else None
    if task is None:
        raise StoreError(f"{video.path}: its manifest records no clip.task, so it may hold "
                         f"recognition or anticipation clips; if it holds {config.task} clips "
                         f"re-import it with `python -m features.import --task {config.task} "
                         f"--overwrite` (same flags otherwise), else re-extract it with "
                         f"`make extract TASK={config.task}`")
    if task != config.task:
        raise StoreError(f"{video.path}: holds {task} clips, but --task is {config.task}; "
                         f"pass a store of {config.task} clips with --video-store NAME, or "
                         f"extract one with `make extract TASK={config.task}`")


SPLIT_FIELDS = ("split", "annotations_sha256", "questions_sha256", "limit", "row_order",
                "batch_size", "source_digest", "missing", "predictions_in_sample")
"""Manifest fields that describe a split's inputs (or only float rounding: the extraction
batch size; `features.import`'s dump digest and missing-row count, as a dump per split is
one way to ship features; whether the predictions the questions were written from are
in-sample, true for the anticipation chain's train split and false for validation and test),
not the extractor; every other identity field must match across splits."""


def check_compatible(train: dict[str, FeatureStore], val: dict[str, FeatureStore]) -> None:
    """Refuse train/validation stores a head cannot use together: other modalities, row
    shapes (widths, token counts) or extractor (manifest fields other than `SPLIT_FIELDS`)."""
    if set(train) != set(val):
        raise StoreError(f"train and validation have modalities {sorted(train)} vs "
                         f"{sorted(val)}")
    for kind, a in train.items():
        b = val[kind]
        problems = [f"array {name}: {a.arrays.get(name)} vs {b.arrays.get(name)}"
                    for name in sorted(set(a.arrays) | set(b.arrays))
                    if a.arrays.get(name) != b.arrays.get(name)]
        manifests = [{k: v for k, v in identity(s.manifest).items() if k not in SPLIT_FIELDS}
                     for s in (a, b)]
        problems += differences(*manifests, prefix="manifest.")
        if problems:
            raise StoreError(
                f"the train and validation {kind} stores differ ({a.path} vs {b.path}): "
                f"{'; '.join(problems[:5])}; extract both splits with the same settings"
            )


def kept_rows(stores: dict[str, FeatureStore], split: str) -> np.ndarray:
    """Rows valid in every store; says on stderr how many failed rows are left out."""
    valid = np.logical_and.reduce([s.valid for s in stores.values()])
    keep = np.flatnonzero(valid)
    if len(keep) < len(valid):
        counts = ", ".join(f"{int((~s.valid).sum())} in {s.path}" for s in stores.values()
                           if not s.valid.all())
        print(f"{split}: excluded {len(valid) - len(keep)} of {len(valid)} rows that failed "
              f"extraction ({counts}; listed in each store's .failures.json)", file=sys.stderr)
    if not len(keep):
        raise StoreError(f"{next(iter(stores.values())).path}: no valid rows in split "
                         f"{split!r} (every clip failed extraction); see its .failures.json")
    return keep


def load_split(config: TrainConfig, split: str, device: torch.device,
               stores: dict[str, FeatureStore] | None = None
               ) -> tuple[FeatureSplit | StreamedSplit, Reference, dict[str, str]]:
    """One split's aligned video (+ question) features on `device`, with its labels.

    Rows that failed extraction in any store are excluded (and counted on stderr).
    """
    stores = stores or open_stores(config, split)
    first_path = next(iter(stores.values())).path  # the video store, or the text store alone
    ids = check_aligned(*stores.values())
    keep = kept_rows(stores, split)
    reference = _aligned(load_reference(split_path(config.data / "annotations", split)),
                         ids[keep], first_path)
    verb = torch.from_numpy(reference.verb_labels.astype(np.int64))
    noun = torch.from_numpy(reference.noun_labels.astype(np.int64))
    narration_ids = [str(i) for i in ids[keep]]
    manifests = {k: s.manifest_hash for k, s in stores.items()}
    features = split_features(config, split, stores, keep, narration_ids, verb, noun, device)
    return features, reference, manifests


def split_features(config: TrainConfig, split: str, stores: dict[str, FeatureStore],
                   keep: np.ndarray, narration_ids: list[str], verb: Tensor, noun: Tensor,
                   device: torch.device) -> FeatureSplit | StreamedSplit:
    """The `keep` rows of aligned `stores` with their labels: loaded onto `device`, or
    streamed when the split is too large for it (`--stream`)."""
    if _stream(config, stores, device):
        folder = next(iter(stores.values())).path.parent
        why = ("--stream always" if config.stream == "always"
               else "larger than free device memory")
        print(f"streaming {split} from {folder} ({why})",
              file=sys.stderr)
        return StreamedSplit(narration_ids, stores, verb, noun, device, rows=keep)
    dtype = feature_dtype(device)
    video = (stores["video"].load(device, arrays=["tokens"], dtype=dtype) if "video" in stores
             else None)
    text = stores["text"].load(device, dtype=dtype) if "text" in stores else None
    if len(keep) < len(next(iter(stores.values()))):
        index = torch.from_numpy(keep).to(device)
        video = {k: v[index] for k, v in video.items()} if video is not None else None
        text = {k: v[index] for k, v in text.items()} if text is not None else None
    inputs, masks = modality_tensors(video, text)
    return FeatureSplit(narration_ids, inputs, masks, verb.to(device), noun.to(device))


def zero_rows(split: FeatureSplit | StreamedSplit, name: str) -> int | None:
    """How many clips' video features are all zeros (None: streamed, not read here). A real
    backbone never outputs an all-zero clip: such rows are failed or placeholder extractions
    (an import that filled gaps with zeros). Every row zero is refused; some are counted."""
    if isinstance(split, StreamedSplit) or "video" not in split.inputs:
        return None
    zero = int((split.inputs["video"] == 0).flatten(1).all(1).sum())
    if zero == len(split):
        raise StoreError(f"{name}: every video row is all zeros: these are no features; "
                         "re-extract the split (make extract) or import real ones")
    if zero:
        print(f"{name}: {zero} of {len(split)} clips have all-zero video features (placeholder "
              "rows?); they are trained on as they are: check the store", file=sys.stderr)
    return zero


def feature_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, as stored (the heads run under bf16 autocast); fp32 on CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def modality_tensors(video: dict[str, Tensor] | None, text: dict[str, Tensor] | None
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Store arrays -> the heads' modalities: `video`, `verb_question`, `noun_question`
    (each store that is given; None: that source is left out)."""
    inputs: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    if video is not None:
        tokens = video["tokens"]
        inputs["video"] = tokens
        masks["video"] = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if text is not None:
        for question in ("verb", "noun"):
            inputs[f"{question}_question"] = text[f"{question}_tokens"]
            masks[f"{question}_question"] = text[f"{question}_mask"]
    return inputs, masks


def _row_bytes(store: FeatureStore, dtype: torch.dtype) -> int:
    total = 0
    for spec in store.arrays.values():
        item = np.dtype(spec.dtype).itemsize
        if np.dtype(spec.dtype).kind == "f":
            item = torch.empty((), dtype=dtype).element_size()
        total += int(np.prod(spec.row_shape)) * item
    return total


def _stream(config: TrainConfig, stores: dict[str, FeatureStore], device: torch.device) -> bool:
    """Whether to stream: `always`, or `auto` on CUDA when the split would take more than
    60 % of the free device memory (both splits, the head and activations need the rest)."""
    if config.stream != "auto":
        return config.stream == "always"
    if device.type != "cuda":
        return False
    need = sum(s.rows * _row_bytes(s, feature_dtype(device)) for s in stores.values())
    free, _ = torch.cuda.mem_get_info(device)
    return need > 0.6 * free


class StreamedSplit:
    """A split read window by window from its stores, with `FeatureSplit`'s interface.

    A window is `window_shards` shards' worth of rows of the first store (the video store,
    or the text store of a questions-only run); windows come in a
    shuffled order (or in file order without a generator), rows are shuffled within a window,
    and a background thread reads the next `prefetch` windows while batches are trained on.
    `rows` are the store rows used (the valid ones; default all), in order; `narration_ids`,
    `verb` and `noun` are theirs.
    """

    def __init__(self, narration_ids: list[str], stores: dict[str, FeatureStore],
                 verb: Tensor, noun: Tensor, device: torch.device, window_shards: int = 8,
                 prefetch: int = 2, rows: np.ndarray | None = None) -> None:
        self.narration_ids, self.stores, self.device = narration_ids, stores, device
        self.rows = np.arange(len(narration_ids)) if rows is None else np.asarray(rows)
        if len(self.rows) != len(narration_ids):
            raise ValueError(f"{len(self.rows)} rows for {len(narration_ids)} narration ids")
        self.verb, self.noun = verb.to(device), noun.to(device)
        self.window_rows = next(iter(stores.values())).shard_rows * window_shards
        self.prefetch = prefetch
        empty = {kind: {name: torch.empty(0, *spec.row_shape) for name, spec in
                        store.arrays.items()} for kind, store in stores.items()}
        inputs, _ = modality_tensors(empty.get("video"), empty.get("text"))
        self._shapes = {k: (int(v.shape[1]), int(v.shape[2])) for k, v in inputs.items()}

    def __len__(self) -> int:
        return len(self.narration_ids)

    @property
    def dims(self) -> dict[str, int]:
        return {name: d for name, (_, d) in self._shapes.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return dict(self._shapes)

    def read_window(self, start: int, stop: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Used rows [start, stop) of every store as host tensors (memory-mapped reads)."""
        dtype = feature_dtype(self.device)
        positions = self.rows[start:stop]
        first, last = int(positions[0]), int(positions[-1]) + 1

        def host(store: FeatureStore, names: list[str] | None = None) -> dict[str, Tensor]:
            arrays = store.read(slice(first, last), names)
            if last - first != len(positions):  # skip the excluded rows in between
                arrays = {k: v[positions - first] for k, v in arrays.items()}
            return {k: torch.from_numpy(np.ascontiguousarray(v)).to(
                dtype if v.dtype.kind == "f" else None) for k, v in arrays.items()}

        text = host(self.stores["text"]) if "text" in self.stores else None
        video = host(self.stores["video"], ["tokens"]) if "video" in self.stores else None
        return modality_tensors(video, text)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        starts = torch.arange(0, len(self), self.window_rows)
        if generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator)]
        # the window permutations are drawn up front, so the generator's use (and a resumed
        # run's batches) does not depend on how far the reader thread has got
        windows = []
        for start in starts.tolist():
            stop = min(start + self.window_rows, len(self))
            order = (torch.randperm(stop - start, generator=generator) if generator is not None
                     else torch.arange(stop - start))
            windows.append((start, stop, order))
        leftover: FeatureSplit | None = None  # a window's last rows, carried to fill a batch
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(self.read_window, a, b) for a, b, _ in windows[: self.prefetch]]
            for i, (start, _, order) in enumerate(windows):
                inputs, masks = futures[i].result()
                if i + self.prefetch < len(windows):
                    a, b, _ = windows[i + self.prefetch]
                    futures.append(pool.submit(self.read_window, a, b))
                rows = order.to(self.device)
                inputs = {k: v.to(self.device, non_blocking=True)[rows] for k, v in
                          inputs.items()}
                masks = {k: v.to(self.device, non_blocking=True)[rows] for k, v in
                         masks.items()}
                index = rows + start
                ids = [self.narration_ids[start + i] for i in order.tolist()]
                window = FeatureSplit(ids, inputs, masks, self.verb[index], self.noun[index])
                if leftover is not None:
                    window = _concat(leftover, window)
                full = len(window) - len(window) % batch_size
                rows = window.as_batch()
                for b in range(0, full, batch_size):
                    yield _rows_slice(rows, b, b + batch_size)  # views of the window
                leftover = window.rows(torch.arange(full, len(window), device=self.device))
        if leftover is not None and len(leftover) and not drop_last:
            yield leftover.batch(torch.arange(len(leftover), device=self.device))


def _concat(first: FeatureSplit, second: FeatureSplit) -> FeatureSplit:
    """The rows of `first`, then those of `second`."""
    return FeatureSplit(
        first.narration_ids + second.narration_ids,
        {k: torch.cat([first.inputs[k], v]) for k, v in second.inputs.items()},
        {k: torch.cat([first.masks[k], v]) for k, v in second.masks.items()},
        torch.cat([first.verb, second.verb]), torch.cat([first.noun, second.noun]))


def load_features(config: TrainConfig, device: torch.device
                  ) -> tuple[FeatureSplit | StreamedSplit, FeatureSplit | StreamedSplit,
                             dict[str, Any]]:
    """Train and validation splits on `device` plus what training and tracking need.

    The info dict: class counts, the dataset's name for captions, the stores' manifest
    hashes (tags, so a run names exactly the features it saw) and the training split's
    manifests themselves (`train_manifests`: kind -> manifest), the rows excluded as failed
    extractions (`excluded`, keyed like `manifests`: `<kind>.<split>` -> count), per-modality
    shapes for FLOP counting, and the validation split's breakdown lists (of its used rows)
    for the EK100 metrics. The stores of both splits are opened and checked against each
    other before any data is loaded.
    """
    train_stores = open_stores(config, config.train_split)
    val_stores = open_stores(config, config.val_split)
    check_compatible(train_stores, val_stores)
    check_task(config, train_stores)
    train, _, manifests = load_split(config, config.train_split, device, train_stores)
    val, reference, val_manifests = load_split(config, config.val_split, device, val_stores)
    dataset = config.dataset or config.data.name
    excluded = {f"{kind}.{split}": int((~store.valid).sum())
                for split, stores in ((config.train_split, train_stores),
                                      (config.val_split, val_stores))
                for kind, store in stores.items()}
    info = {
        "num_verbs": reference.n_verbs,
        "num_nouns": reference.n_nouns,
        "dataset": DATASET_NAMES.get(dataset, dataset),
        "manifests": {**{f"{k}.{config.train_split}": v for k, v in manifests.items()},
                      **{f"{k}.{config.val_split}": v for k, v in val_manifests.items()}},
        "excluded": excluded,
        # the training split's store manifests as loaded (tracking tags the features by them)
        "train_manifests": {kind: store.manifest for kind, store in train_stores.items()},
        # what training reads: whole splits on the device, or windows streamed from the store
        "streamed": isinstance(train, StreamedSplit),
        "train_clips": len(train),  # rows used (failed extractions left out)
        "val_clips": len(val),
        "zero_rows": {f"video.{split}": zero_rows(features, f"{split} split")
                      for split, features in ((config.train_split, train),
                                              (config.val_split, val))},
        "profile_shapes": train.shapes,
        "metric_extra": {
            "participant_ids": reference.participant_ids,  # aligned to val's rows
            "unseen_participants": reference.unseen_participants,
            "tail_verbs": reference.tail_verbs,
            "tail_nouns": reference.tail_nouns,
        },
    }
    return train, val, info

