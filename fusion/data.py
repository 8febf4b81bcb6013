"""Training data on the device: a split's features as tensors, shuffled and batched there.

EK100-sized frame tokens fit in GPU memory (67,217 x 16 x 1024 fp16 is 2.2 GB), so a split
is loaded once and every epoch is index arithmetic on the GPU: no DataLoader, no host copy
per step. Shuffling uses an explicit `torch.Generator`, whose state goes into checkpoints
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from features.annotations import split_path
from features.store import FeatureStore, check_aligned, store_path
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

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FeatureSplit:
        def move(t: Tensor) -> Tensor:
            return t.to(device, dtype=dtype if dtype and t.is_floating_point() else None)

        return FeatureSplit(
            self.narration_ids,
            {k: move(v) for k, v in self.inputs.items()},
            {k: v.to(device) for k, v in self.masks.items()},
            self.verb.to(device),
            self.noun.to(device),
        )

    def batch(self, index: Tensor) -> Batch:
        return Batch(
            index,
            {k: v[index] for k, v in self.inputs.items()},
            {k: v[index] for k, v in self.masks.items()},
            self.verb[index],
            self.noun[index],
        )

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Batches in a random order when `generator` is given, else in file order."""
        device = self.verb.device
        if generator is None:
            order = torch.arange(len(self), device=device)
        else:
            order = torch.randperm(len(self), generator=generator).to(device)
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])


DATASET_NAMES = {"demo": "synthetic-demo"}
"""Store dataset folder -> the name runs are tagged with (table captions print it)."""


def video_store_name(config: TrainConfig) -> str:
    """`<backbone>` (`<backbone>-anticipation` for anticipation), as `python -m extract video`."""
    if config.video_store:
        return config.video_store
    return config.backbone + ("-anticipation" if config.task == "anticipation" else "")


def text_store_name(config: TrainConfig) -> str:
    """`<text_model>-<generator>-<mask>` as `python -m extract text` names it.

    Anticipation reads questions of the `predictions` generator (the clip is not seen yet).
    """
    if config.text_store:
        return config.text_store
    generator = "predictions" if config.task == "anticipation" else "template"
    return f"{config.text_model}-{generator}-{config.question_mask}"


def _labels(reference: Reference, ids: np.ndarray, store: Path) -> tuple[Tensor, Tensor]:
    """Verb and noun labels in the store's row order; clear error on a missing clip."""
    row = {narration_id: i for i, narration_id in enumerate(reference.narration_id)}
    missing = [n for n in ids if n not in row]
    if missing:
        raise ValueError(f"{store}: {len(missing)} clip(s) not in the annotations "
                         f"(first {missing[0]!r}); extract from the same annotation folder")
    index = np.fromiter((row[n] for n in ids), dtype=np.int64, count=len(ids))
    return (torch.from_numpy(reference.verb_labels[index].astype(np.int64)),
            torch.from_numpy(reference.noun_labels[index].astype(np.int64)))


def load_split(config: TrainConfig, split: str, device: torch.device
               ) -> tuple[FeatureSplit, Reference, dict[str, str]]:
    """One split's aligned video (+ question) features on `device`, with its labels."""
    root = config.data / "features"
    dataset = config.dataset or config.data.name
    video_path = store_path(root, dataset, split, "video", video_store_name(config))
    paths = {"video": video_path}
    if config.questions == "both":
        paths["text"] = store_path(root, dataset, split, "text", text_store_name(config))
    for kind, path in paths.items():
        if not path.exists():
            what = "make extract" if kind == "video" else "make embed-text"
            raise FileNotFoundError(f"{path}: no {kind} feature store; run `{what}` for split "
                                    f"{split!r} first (or pass --{kind}-store NAME)")
    stores = {kind: FeatureStore(path) for kind, path in paths.items()}
    ids = check_aligned(*stores.values())
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    video = stores["video"].load(device, arrays=["tokens"], dtype=dtype)["tokens"]
    inputs = {"video": video}
    masks = {"video": torch.ones(video.shape[:2], dtype=torch.bool, device=device)}
    if "text" in stores:
        text = stores["text"].load(device, dtype=dtype)
        for question in ("verb", "noun"):
            inputs[f"{question}_question"] = text[f"{question}_tokens"]
            masks[f"{question}_question"] = text[f"{question}_mask"]
    reference = load_reference(split_path(config.data / "annotations", split))
    verb, noun = _labels(reference, ids, video_path)
    features = FeatureSplit([str(i) for i in ids], inputs, masks, verb.to(device),
                            noun.to(device))
    return features, reference, {k: s.manifest_hash for k, s in stores.items()}


def load_features(config: TrainConfig, device: torch.device
                  ) -> tuple[FeatureSplit, FeatureSplit, dict[str, Any]]:
    """Train and validation splits on `device` plus what training and tracking need.

    The info dict: class counts, the dataset's name for captions, the stores' manifest
    hashes (tags, so a run names exactly the features it saw), per-modality shapes for
    FLOP counting, and the validation split's breakdown lists for the EK100 metrics.
    """
    train, _, manifests = load_split(config, config.train_split, device)
    val, reference, val_manifests = load_split(config, config.val_split, device)
    dataset = config.dataset or config.data.name
    info = {
        "num_verbs": reference.n_verbs,
        "num_nouns": reference.n_nouns,
        "dataset": DATASET_NAMES.get(dataset, dataset),
        "manifests": {**{f"{k}.{config.train_split}": v for k, v in manifests.items()},
                      **{f"{k}.{config.val_split}": v for k, v in val_manifests.items()}},
        "profile_shapes": {k: tuple(v.shape[1:]) for k, v in train.inputs.items()},
        "metric_extra": {
            "participant_ids": _participants(reference, val.narration_ids),
            "unseen_participants": reference.unseen_participants,
            "tail_verbs": reference.tail_verbs,
            "tail_nouns": reference.tail_nouns,
        },
    }
    return train, val, info


def _participants(reference: Reference, ids: list[str]) -> np.ndarray:
    row = {n: i for i, n in enumerate(reference.narration_id)}
    return reference.participant_ids[[row[n] for n in ids]]
