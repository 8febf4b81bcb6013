"""Import precomputed per-clip features into a feature store.

    python -m features.import --source orvit_val.h5 --backbone orvit --task recognition \
        --annotations data/ek100/annotations --split validation

Why: ORViT (dumped with ORViT's own code) and any other backbone we do not run ourselves
enter the harness here, landing in the same store format, with a manifest, in the row order
of the annotation split so they align with every other store of that split.

Sources, each keyed by narration id:
- HDF5 (`.h5`/`.hdf5`): datasets `features` (N, D) or (N, L, D) plus `narration_id` (N,)
  strings; or one dataset per narration id (anywhere in the file, named by its basename).
- a folder of `<narration_id>.npy` or `<narration_id>.pt` files (a tensor, or a dict
  holding one tensor or the `--key` entry).

A clip is (D,) (stored as L = 1) or (L, D); all clips must share one shape; values are
stored as float16. Segments of the split without features stop the import with a list of
them, unless `--allow-missing` (then they are zero rows with an error in the store).
The import is resumable like extraction: a rerun continues after the last written shard.
A finished import writes the store's `<store stem>.failures.json` as extraction does
(`features.store.write_failure_report`; the `--allow-missing` rows are its `failed`), the
file the Makefile's chains wait for.

`--task recognition|anticipation` says which clips the source holds (the action segments, or
the observed windows before them) and lands in the manifest as `clip.task`, the field
`extract` writes; `fusion.data.check_task` refuses a store whose task is not the run's, and
one without a task. It has no default on purpose: the importer cannot tell a dump's clips
apart, and a default would label an anticipation dump recognition (or the reverse) without
anyone having said so, so that training accepted it. An import without `--task` stops at once
with one line (the field is optional only so that this check, not the parser's usage text,
refuses it).
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from features.annotations import load_split, split_path
from features.config import cli
from features.errors import HarnessError
from features.safeload import torch_reason, unreadable
from features.store import (
    DEFAULT_SHARD_ROWS,
    ArraySpec,
    FeatureStore,
    make_manifest,
    open_writer,
    store_path,
    write_failure_report,
)

SHARD_BYTES = 256 << 20


@dataclass
class ImportConfig:
    """Import precomputed features (HDF5, or .npy/.pt per clip) into a feature store."""

    source: Path
    """An HDF5 file or a folder of `<narration_id>.npy|.pt` files."""
    task: Literal["recognition", "anticipation"] | None = None
    """Which task's clips the source holds: `recognition` (the action segments) or
    `anticipation` (the observed windows before them). Required: the manifest's `clip.task`,
    which training checks against its --task."""
    backbone: str = "orvit"
    """Name of the backbone that made the features (manifest and store name)."""
    annotations: Path | None = None
    """EK100 annotation folder: rows follow its `--split` file (else --order-from)."""
    split: str = "validation"
    order_from: Path | None = None
    """Another store whose narration-id order to copy (instead of --annotations)."""
    key: str | None = None
    """Entry to take from `.pt` files that hold a dict of tensors."""
    kind: str = "video"
    tokens: str = "unknown"
    """Token granularity of the source (cls, frame, patch, object, ...), for the manifest."""
    frames: int | None = None
    note: str = ""
    """Free text for the manifest: how the features were made (command, commit, checkpoint)."""
    root: Path = Path("data/ek100/features")
    dataset: str = "ek100"
    name: str | None = None
    """Store name (default: the backbone)."""
    out: Path | None = None
    shard_rows: int | None = None
    allow_missing: bool = False
    overwrite: bool = False
    progress: bool = True


class Source:
    """Random access to per-clip arrays by narration id."""

    format: str
    ids: list[str]

    def read(self, narration_id: str) -> np.ndarray:
        raise NotImplementedError

    def digest(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HDF5Source(Source):
    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except OSError as error:  # h5py's errors do not name the file
            raise unreadable(path, "HDF5 file", error) from None
        if "features" in self.file and "narration_id" in self.file:
            self.format = "hdf5:features+narration_id"
            raw = self.file["narration_id"][()]
            self.ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw]
            self.rows = {nid: i for i, nid in enumerate(self.ids)}
            self.features = self.file["features"]
            if len(self.features) != len(self.ids):
                raise SystemExit(
                    f"{path}: 'features' has {len(self.features)} rows, 'narration_id' "
                    f"{len(self.ids)}"
                )
        else:
            self.format = "hdf5:dataset-per-clip"
            self.datasets: dict[str, str] = {}

            def visit(name: str, item: Any) -> None:
                if isinstance(item, h5py.Dataset):
                    key = name.rsplit("/", 1)[-1]
                    if key in self.datasets:
                        raise SystemExit(f"{path}: two datasets named {key!r}")
                    self.datasets[key] = name

            self.file.visititems(visit)
            self.ids = list(self.datasets)

    def read(self, narration_id: str) -> np.ndarray:
        if self.format == "hdf5:features+narration_id":
            return np.asarray(self.features[self.rows[narration_id]])
        return np.asarray(self.file[self.datasets[narration_id]][()])

    def digest(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def close(self) -> None:
        self.file.close()


class FolderSource(Source):
    def __init__(self, path: Path, key: str | None) -> None:
        self.path, self.key = path, key
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".pt"))
        suffixes = {p.suffix for p in files}
        if len(suffixes) > 1:
            raise SystemExit(f"{path}: mixes .npy and .pt files; keep one format per folder")
        self.format = f"folder:{suffixes.pop() if suffixes else 'empty'}"
        self.files = {p.stem: p for p in files}
        self.ids = list(self.files)

    def read(self, narration_id: str) -> np.ndarray:
        file = self.files[narration_id]
        if file.suffix == ".npy":
            try:
                return np.load(file, allow_pickle=False)
            except (ValueError, EOFError) as error:  # pickled objects, empty, not .npy
                raise unreadable(file, "NumPy .npy array", error
                                 ) from None
        try:
            value = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:  # more than tensors, or not a torch file
            raise HarnessError(
                f"{file}: torch.load(weights_only=True) cannot read it ({torch_reason(error)}); "
                "save a tensor or a dict of tensors with torch.save"
            ) from None
        except (RuntimeError, EOFError) as error:
            raise unreadable(file, "PyTorch file", error) from None
        if isinstance(value, dict):
            if self.key is None:
                tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
                if len(tensors) != 1:
                    raise SystemExit(f"{file}: a dict with keys {sorted(value)}; pass --key")
                value = tensors[0]
            else:
                if self.key not in value:
                    raise SystemExit(f"{file}: no key {self.key!r} (has {sorted(value)})")
                value = value[self.key]
        if not isinstance(value, torch.Tensor):
            raise SystemExit(f"{file}: holds {type(value).__name__}, not a tensor")
        return value.detach().float().numpy()

    def digest(self) -> str:
        """Digest of the listing (names and sizes): cheap, and changes when files do."""
        digest = hashlib.sha256()
        for name, file in sorted(self.files.items()):
            digest.update(f"{name}\t{file.stat().st_size}\n".encode())
        return digest.hexdigest()


def open_source(path: Path, key: str | None = None) -> Source:
    if path.is_dir():
        return FolderSource(path, key)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return HDF5Source(path)
    raise SystemExit(f"{path}: not an HDF5 file (.h5/.hdf5) or a folder of .npy/.pt files")


def as_rows(value: np.ndarray, narration_id: str) -> np.ndarray:
    """(D,) -> (1, D); (L, D) unchanged; anything else is an error naming the clip."""
    if value.ndim == 1:
        return value[None]
    if value.ndim == 2:
        return value
    raise SystemExit(f"{narration_id}: features of shape {value.shape}; expected (D,) or (L, D)")


def row_order(config: ImportConfig, source: Source) -> tuple[list[str], str]:
    if config.annotations is not None:
        segments = load_split(config.annotations, config.split).segments
        return segments["narration_id"].tolist(), str(split_path(config.annotations, config.split))
    if config.order_from is not None:
        return [str(i) for i in FeatureStore(config.order_from).narration_ids], str(
            config.order_from
        )
    print("warning: no --annotations or --order-from: rows follow the source", file=sys.stderr)
    return list(source.ids), "source"


TASKS = ("recognition", "anticipation")


def import_features(config: ImportConfig) -> int:
    """Import (or resume importing) `config.source`; returns the exit status."""
    if config.task not in TASKS:
        raise HarnessError(
            f"{config.source}: pass --task recognition (clips of the action segments) or "
            "--task anticipation (the observed windows before them): the store records which, "
            "and training refuses a store that does not say"
        )
    source = open_source(config.source, config.key)
    try:
        return _import(config, source)
    finally:
        source.close()


def _import(config: ImportConfig, source: Source) -> int:
    ids, order = row_order(config, source)
    available = set(source.ids)
    missing = [i for i in ids if i not in available]
    extra = len(available - set(ids))
    if missing and not config.allow_missing:
        listing = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise SystemExit(
            f"{config.source}: no features for {len(missing)} of {len(ids)} segments ({order}): "
            f"{listing}\n(pass --allow-missing to store them as zeros, marked failed)"
        )
    present = next((i for i in ids if i in available), None)
    if present is None:
        raise SystemExit(f"{config.source}: none of the {len(ids)} segments has features")
    shape = as_rows(source.read(present), present).shape
    shard_rows = config.shard_rows or max(
        1, min(DEFAULT_SHARD_ROWS, SHARD_BYTES // (2 * shape[0] * shape[1]))
    )
    manifest = make_manifest(
        modality=config.kind,
        extractor="python -m features.import",
        backbone={"name": config.backbone},
        source_format=source.format,
        source_digest=source.digest(),
        sources={"source": str(config.source), "row_order": order},
        split=config.split,
        dataset=config.dataset,
        tokens=config.tokens,
        frames=config.frames,
        token_shape=list(shape),
        dtype="float16",
        missing=len(missing),
        clip={"task": config.task},  # the field `extract` writes; fusion.data.check_task reads it
        note=config.note,
    )
    path = config.out or store_path(
        config.root, config.dataset, config.split, config.kind, config.name or config.backbone
    )
    writer = open_writer(
        path, ids, {"tokens": ArraySpec(shape)}, manifest, config.kind, shard_rows,
        overwrite=config.overwrite,
    )  # fmt: skip
    shards = writer.pending_shards()
    started = time.perf_counter()
    with tqdm(total=len(shards), unit="shard", disable=not config.progress) as progress:
        for shard in shards:
            start, stop = writer.shard_range(shard)
            data = np.zeros((stop - start, *shape), dtype=np.float16)
            errors = [""] * (stop - start)
            for row, nid in enumerate(ids[start:stop]):
                if nid not in available:
                    errors[row] = f"missing from {config.source}"
                    continue
                value = as_rows(np.asarray(source.read(nid)), nid)
                if value.shape != shape:
                    raise SystemExit(
                        f"{config.source}: {nid} has shape {value.shape}, the first clip "
                        f"({present}) {shape}; all clips must share one shape"
                    )
                converted = value.astype(np.float16)
                if not np.isfinite(converted).all() and np.isfinite(value).all():
                    raise SystemExit(f"{nid}: values overflow float16 (|x| > 65504)")
                data[row] = converted
            writer.write_shard(shard, {"tokens": data}, errors)
            progress.update(1)
    store = FeatureStore(path)
    report = write_failure_report(store)
    print(
        f"{path}: {store.rows} rows ({len(missing)} missing, {extra} extra clips in the source "
        f"ignored), {len(shards)} shards written in {time.perf_counter() - started:.1f} s; "
        f"manifest {store.manifest_hash[:12]}; report {report}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    config = cli(ImportConfig, args=argv)
    return import_features(config)


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
