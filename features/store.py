"""The feature store: per-clip features of one split in a sharded Zarr v3 group.

Why this shape: backbones run once and fusion heads read the result for days, so the
store must be fast to read (whole splits into GPU memory, random batches, streaming), safe
to interrupt while it is written (a shard is valid only once it is marked done), and say
exactly what produced it (the manifest).

Layout: one group per dataset / split / extractor, `store_path(root, dataset, split, kind,
name)` = `<root>/<dataset>/<split>/<kind>-<name>.zarr`, e.g.
`features/ek100/validation/video-vitl.zarr`, `.../text-roberta-base.zarr`. In the group:

- `narration_id` (N,) string, one chunk: the row order, fixed when the store is created.
- data arrays, each (N, *row_shape), one chunk per row, shards of `shard_rows` rows:
  - video stores: `tokens` float16 (N, L, D) (L = 1 / T / T*P for cls / frame / patch
    tokens). No mask: every token of a video clip is valid.
  - text stores: one array pair per question, `verb_tokens`, `noun_tokens` float16
    (N, L, D) padded to the max length, and `verb_mask`, `noun_mask` bool (N, L), True on
    real tokens (the attention mask). Padded positions hold zeros.
  Uncompressed by default: float16 activations barely compress, and raw chunks let the
  reader map shard files directly (`_RawShards`).
- `error` (N,) string, one chunk per shard: "" for a good row, else why it is zeros
  (unreadable video, segment outside its video, missing clip in an import).

Every chunk of every array is written, zeros included (group attribute
`all_chunks_written`; stores made before it may omit all-zero chunks), so a raw shard file
has an exact size and a deleted error chunk is noticed.
- `done` (num_shards,) bool, one chunk (file) per shard: set only after all of the shard's
  rows, arrays and errors are written. Zarr writes each file atomically (temp + rename), a
  shard is written in one call, so a SIGKILL leaves either the old or the new shard and a
  shard is never marked done half-written. Rows of shards not done are not valid.

Group attributes: `schema`, `kind`, `rows`, `shard_rows`, `arrays` (name -> row shape and
dtype), `manifest` (what produced the features: extractor and backbone config, checkpoint
sha256, sampling/preprocessing, token granularity, text model and max length, package
versions, git revision, creation time, input paths) and `manifest_hash` (sha256 of the
manifest without `created`, `environment` and `sources`, i.e. of what determines the
features; training runs record it to name the exact features they used).

Writing: `open_writer(...)` creates the store atomically (built in a temp folder, then
renamed) or reopens an existing one after checking it was made by the same config, and
`StoreWriter.write_shard(k, arrays, errors)` writes a whole shard. Processes that write
disjoint shards touch disjoint files, so ranks need no locks.

Reading: `FeatureStore(path)`: `read(index)` / `get(narration_id)` for random access,
`load(device=...)` a whole split as torch tensors, `iter_shards(prefetch=...)` streams
shards for stores larger than memory, `check_aligned(*stores)` refuses stores whose rows
differ.

A store cannot lie to its reader: opening it verifies `manifest_hash` against the manifest
(an edited manifest or hash is a StoreError), and every open/refresh stats the files that
the `done` record promises: each data array's shard file must exist and have the exact size
of an uncompressed raw shard (compressed: exist and be non-empty), each error chunk must
exist. A shard whose files fail this is `damaged`: it counts as not written (`complete` is
False, its rows are not `valid`, reads refuse it, a rerun of the extraction rewrites it),
so missing data never comes back as the fill value. Rows holding NaN or inf are refused by
`load`, `read` and `iter_shards`, naming the store, split, row and count.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import queue
import shutil
import subprocess
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from features.errors import HarnessError

SCHEMA = "mambavl.features/1"
DEFAULT_SHARD_ROWS = 256
# Not part of a store's identity or hash: when and where it was made, and the input paths
# (their content is identified by the sha256 fields).
VOLATILE_KEYS = ("created", "environment", "sources")
PACKAGES = ("torch", "numpy", "zarr", "transformers", "tokenizers", "av", "h5py", "mambavl-harness")
NOT_WRITTEN = "not written"
ALL_CHUNKS = "all_chunks_written"  # attribute: zero chunks are on disk too (exact sizes)
WRITE_ALL = {"write_empty_chunks": True}  # a runtime setting: zarr does not store it


class StoreError(HarnessError, ValueError):
    """A store that cannot be used as asked; the message says which store and what to do."""


class AlignmentError(StoreError):
    """Stores whose rows (narration ids) do not line up."""


# ----------------------------------------------------------------------------- manifests


def store_path(root: str | os.PathLike, dataset: str, split: str, kind: str, name: str) -> Path:
    """`<root>/<dataset>/<split>/<kind>-<name>.zarr`, the conventional place of a store."""
    return Path(root) / dataset / split / f"{kind}-{name}.zarr"


def git_revision(path: str | os.PathLike | None = None) -> str:
    """The project's commit, with `-dirty` when tracked files differ; "unknown" outside git."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Package versions, Python, host and git revision: what ran, for the manifest."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_revision": git_revision(),
    }


def make_manifest(**fields: Any) -> dict[str, Any]:
    """A manifest from the extractor's fields plus `environment` and `created` (UTC)."""
    manifest = json.loads(json.dumps(fields, default=str))
    manifest["environment"] = environment()
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return manifest


def identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest without volatile keys: equal identities mean equal features."""
    return {k: v for k, v in manifest.items() if k not in VOLATILE_KEYS}


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest's identity: equal hash, equal features."""
    text = json.dumps(identity(manifest), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`key: a vs b` for every (nested) field where two manifests differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if key not in a or key not in b:
            out.append(f"{name}: {a.get(key, '<absent>')!r} vs {b.get(key, '<absent>')!r}")
        elif isinstance(a[key], Mapping) and isinstance(b[key], Mapping):
            out.extend(differences(a[key], b[key], name + "."))
        elif a[key] != b[key]:
            out.append(f"{name}: {a[key]!r} vs {b[key]!r}")
    return out


# -------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ArraySpec:
    """A data array: per-row shape and dtype (float16 features, bool masks)."""

    row_shape: tuple[int, ...]
    dtype: str = "float16"

    def to_json(self) -> dict[str, Any]:
        return {"row_shape": list(self.row_shape), "dtype": self.dtype}


def _create_group(
    path: Path,
    narration_ids: Sequence[str],
    arrays: Mapping[str, ArraySpec],
    attrs: dict[str, Any],
    shard_rows: int,
    compressors: Any,
) -> None:
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    n = len(narration_ids)
    ids = group.create_array("narration_id", shape=(n,), dtype=str, chunks=(max(n, 1),))
    if n:
        ids[:] = np.asarray(narration_ids, dtype=object)
    shards = -(-n // shard_rows)
    for name, spec in arrays.items():
        row = tuple(spec.row_shape)
        group.create_array(
            name,
            shape=(n, *row),
            dtype=spec.dtype,
            chunks=(1, *row),
            shards=(shard_rows, *row),
            compressors=compressors,
            fill_value=0,
            config=WRITE_ALL,  # every row stored: uniform raw shards
        )
    group.create_array("error", shape=(n,), dtype=str, chunks=(shard_rows,))
    group.create_array("done", shape=(shards,), dtype=bool, chunks=(1,), fill_value=False)
    group.attrs.update({**attrs, ALL_CHUNKS: True})


def _remove_stale_temps(path: Path) -> None:
    """Temp folders left by creators killed before their rename (dead pids on this host)."""
    for temp in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(temp.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            shutil.rmtree(temp, ignore_errors=True)
        except PermissionError:
            continue


class StoreWriter:
    """Writes whole shards of an existing store; see `open_writer`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.group = zarr.open_group(self.path, mode="r+")
        attrs = dict(self.group.attrs)
        self.rows = int(attrs["rows"])
        self.shard_rows = int(attrs["shard_rows"])
        self.arrays = {
            k: ArraySpec(tuple(v["row_shape"]), v["dtype"]) for k, v in attrs["arrays"].items()
        }
        self.manifest = attrs["manifest"]
        self.num_shards = -(-self.rows // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Rows [start, stop) of `shard`."""
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    def done(self) -> np.ndarray:
        """Shards marked done whose files are intact (damaged ones are rewritten on resume)."""
        done = np.asarray(self.group["done"][:], dtype=bool)
        done[list(damaged_shards(self.group, self.path, done))] = False
        return done

    def pending_shards(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Shards of `rank` (k % world_size == rank) not yet done, in order."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        done = self.done()
        return [k for k in range(rank, self.num_shards, world_size) if not done[k]]

    def write_shard(
        self,
        shard: int,
        data: Mapping[str, np.ndarray | torch.Tensor],
        errors: Sequence[str] | None = None,
    ) -> None:
        """Write every row of `shard` (all data arrays), its errors, then mark it done."""
        start, stop = self.shard_range(shard)
        if set(data) != set(self.arrays):
            raise StoreError(
                f"{self.path}: shard data has {sorted(data)}, expected {sorted(self.arrays)}"
            )
        for name, spec in self.arrays.items():
            value = data[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            value = np.asarray(value, dtype=spec.dtype)
            if value.shape != (stop - start, *spec.row_shape):
                raise StoreError(
                    f"{self.path}: {name} of shard {shard} has shape {value.shape}, expected "
                    f"{(stop - start, *spec.row_shape)}"
                )
            array = self.group[name].with_config(WRITE_ALL)
            file = _shard_file(array, self.path, shard)
            expected = _raw_size(array, shard) if _RawShards.supported(array) else None
            if file.exists() and _file_problem(file, self.path, expected):
                file.unlink()  # zarr would merge into the damaged file and fail its checksum
            array[start:stop] = value
        errors = [""] * (stop - start) if errors is None else [str(e) for e in errors]
        if len(errors) != stop - start:
            raise StoreError(f"{self.path}: {len(errors)} errors for {stop - start} rows")
        error_array = self.group["error"].with_config(WRITE_ALL)
        error_array[start:stop] = np.asarray(errors, dtype=object)
        _kill_hook(shard)
        self.group["done"][shard : shard + 1] = np.ones(1, dtype=bool)


def _kill_hook(shard: int) -> None:
    """Test hook: `MAMBAVL_KILL_BEFORE_DONE=k` SIGKILLs this process before marking shard k."""
    target = os.environ.get("MAMBAVL_KILL_BEFORE_DONE")
    if target is not None and int(target) == shard:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def open_writer(
    path: str | os.PathLike,
    narration_ids: Sequence[str],
    arrays: Mapping[str, ArraySpec],
    manifest: Mapping[str, Any],
    kind: str,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    compressors: Any = None,
    overwrite: bool = False,
) -> StoreWriter:
    """Create the store at `path`, or reopen it to resume if it was made by the same config.

    Creation is atomic: the group is built in a temp folder next to `path` and renamed, so
    concurrent ranks race safely (the loser opens the winner's store) and a killed creator
    leaves nothing half-made at `path`. An existing store with other rows, arrays, shard
    size or manifest identity is refused (StoreError), unless `overwrite`.
    """
    path = Path(path)
    ids = [str(i) for i in narration_ids]
    if len(set(ids)) != len(ids):
        raise StoreError(f"{path}: duplicate narration ids")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be positive, got {shard_rows}")
    arrays = {
        k: ArraySpec(tuple(int(x) for x in v.row_shape), str(v.dtype)) for k, v in arrays.items()
    }
    clash = {"narration_id", "error", "done"} & set(arrays)
    if clash:
        raise StoreError(f"array names {sorted(clash)} are reserved")
    manifest = json.loads(json.dumps(dict(manifest), default=str))
    attrs = {
        "schema": SCHEMA,
        "kind": kind,
        "rows": len(ids),
        "shard_rows": shard_rows,
        "arrays": {k: v.to_json() for k, v in arrays.items()},
        "manifest": manifest,
        "manifest_hash": manifest_hash(manifest),
    }
    if overwrite and path.exists():
        shutil.rmtree(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        temp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _create_group(temp, ids, arrays, attrs, shard_rows, compressors)
        try:
            os.rename(temp, path)
        except OSError:  # another process created it first
            if not path.exists():
                raise
            shutil.rmtree(temp, ignore_errors=True)
    _check_resumable(path, ids, attrs)
    return StoreWriter(path)


def _check_resumable(path: Path, ids: list[str], attrs: dict[str, Any]) -> None:
    try:
        existing = FeatureStore(path)
    except StoreError as error:
        raise StoreError(f"{error}; delete it or pass --overwrite") from None
    problems = []
    for key in ("schema", "kind", "rows", "shard_rows", "arrays"):
        if existing.attrs.get(key) != attrs[key]:
            problems.append(f"{key}: {existing.attrs.get(key)!r} vs {attrs[key]!r}")
    problems += differences(identity(existing.manifest), identity(attrs["manifest"]), "manifest.")
    if not problems:
        mismatch = np.nonzero(existing.narration_ids != np.asarray(ids, dtype=object))[0]
        if len(mismatch):
            i = int(mismatch[0])
            problems.append(f"narration_id row {i}: {existing.narration_ids[i]!r} vs {ids[i]!r}")
    if problems:
        listing = "\n  ".join(problems[:20])
        raise StoreError(
            f"{path} exists and was made differently (existing vs requested):\n  {listing}\n"
            "Resume only with the same settings; else pass --overwrite or choose another output."
        )


# -------------------------------------------------------------------------------- reading


def _shard_file(array: zarr.Array, root: Path, shard: int) -> Path:
    """The file holding shard `shard` of `array` (chunk `shard` for unsharded arrays)."""
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    return root / array.path / key


def _raw_size(array: zarr.Array, shard: int) -> int:
    """Bytes of an uncompressed raw shard file: every row's chunk, then the shard index."""
    shard_rows = int(array.shards[0])
    rows = min(shard_rows, int(array.shape[0]) - shard * shard_rows)
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
    return rows * row_bytes + shard_rows * 16 + 4


def _file_problem(file: Path, root: Path, expected: int | None) -> str | None:
    """Why `file` cannot hold its data (missing, empty, wrong size), or None."""
    name = file.relative_to(root).as_posix()
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        return f"{name} is missing"
    if size == 0:
        return f"{name} is empty"
    if expected is not None and size != expected:
        return f"{name} has {size} bytes, expected {expected} (truncated or overwritten)"
    return None


def damaged_shards(group: zarr.Group, root: Path, done: np.ndarray) -> dict[int, str]:
    """{shard: why} for shards marked done whose files are missing, empty or mis-sized.

    Stat calls only (one per data array and shard, plus the error chunk), so it runs on
    every open/refresh. Only local stores are checked (the only kind `FeatureStore` opens).
    """
    if not isinstance(group.store_path.store, zarr.storage.LocalStore):
        return {}
    attrs = group.attrs
    exact = bool(attrs.get(ALL_CHUNKS))  # older stores may omit all-zero chunks
    names = list(attrs["arrays"]) + (["error"] if exact else [])
    damaged: dict[int, str] = {}
    for name in names:
        array = group[name]
        raw = exact and name != "error" and _RawShards.supported(array)
        for shard in np.flatnonzero(done):
            if int(shard) in damaged:
                continue
            file = _shard_file(array, root, int(shard))
            problem = _file_problem(file, root, _raw_size(array, int(shard)) if raw else None)
            if problem:
                damaged[int(shard)] = problem
    return damaged


class _RawShards:
    """Direct reads of uncompressed sharded arrays from memory-mapped shard files.

    Zarr's generic path costs ~0.1 ms of Python per chunk; a shard whose inner chunks are
    raw little-endian bytes, stored in order (what `_create_group` writes), is a plain
    (shard_rows, *row) array at offset 0 of its file. The shard index at the file's end
    is checked once per shard; anything else falls back to zarr.
    """

    def __init__(self, array: zarr.Array, root: Path, exact: bool = True) -> None:
        self.array = array
        self.rows = int(array.shape[0])
        self.row_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.shard_rows = int(array.shards[0]) if array.shards else 0
        self.store_root, self.exact = root, exact  # exact: every chunk written, sizes known
        self.root = root / array.path
        self._maps: dict[int, np.ndarray | None] = {}

    @classmethod
    def supported(cls, array: zarr.Array) -> bool:
        meta = array.metadata
        if getattr(meta, "zarr_format", None) != 3 or not array.shards or len(meta.codecs) != 1:
            return False
        sharding = meta.codecs[0]
        inner = getattr(sharding, "codecs", None)
        return (
            type(sharding).__name__ == "ShardingCodec"
            and inner is not None
            and len(inner) == 1
            and type(inner[0]).__name__ == "BytesCodec"
            and str(getattr(sharding.index_location, "value", "")) == "end"
            and tuple(array.chunks[1:]) == tuple(array.shape[1:])
            and array.chunks[0] == 1
            and isinstance(array.store_path.store, zarr.storage.LocalStore)
        )

    def _shard(self, shard: int) -> np.ndarray | None:
        if shard not in self._maps:
            self._maps[shard] = self._map(shard)
        return self._maps[shard]

    def _map(self, shard: int) -> np.ndarray | None:
        key = self.array.metadata.encode_chunk_key((shard,) + (0,) * len(self.row_shape))
        file = self.root / key
        expected = _raw_size(self.array, shard)
        problem = _file_problem(file, self.store_root, expected if self.exact else None)
        if problem:  # deleted or cut after the store was opened: never read as fill values
            raise StoreError(f"{self.store_root}: shard {shard} is damaged ({problem}); rerun the "
                             "extraction command to rewrite it, or re-extract with --overwrite")
        size = file.stat().st_size
        if size != expected:  # an older store with all-zero chunks omitted: zarr reads it
            return None
        rows = min(self.shard_rows, self.rows - shard * self.shard_rows)  # edge shard: fewer
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        index_bytes = self.shard_rows * 16 + 4
        with open(file, "rb") as handle:
            handle.seek(size - index_bytes)
            index = np.frombuffer(handle.read(index_bytes - 4), dtype="<u8").reshape(-1, 2)
        offsets = np.arange(rows, dtype=np.uint64) * np.uint64(row_bytes)
        if not (np.array_equal(index[:rows, 0], offsets) and np.all(index[:rows, 1] == row_bytes)):
            return None
        return np.memmap(file, dtype=self.dtype, mode="r", shape=(rows, *self.row_shape))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (any order) as an array; each shard is read through zarr if not raw."""
        out = np.empty((len(rows), *self.row_shape), dtype=self.array.dtype)
        shards = rows // self.shard_rows
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        for group in np.split(order, bounds):
            if not len(group):
                continue
            shard = int(shards[group[0]])
            local = rows[group] - shard * self.shard_rows
            data = self._shard(shard)
            if data is None:
                unique, inverse = np.unique(rows[group], return_inverse=True)
                out[group] = self.array.oindex[unique][inverse]
            else:
                out[group] = data[local]
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) within one shard, without a copy when raw."""
        shard = start // self.shard_rows
        data = self._shard(shard)
        if data is None:
            return self.array[start:stop]
        base = shard * self.shard_rows
        return data[start - base : stop - base]


@dataclass
class Shard:
    """One shard of a streamed store: rows [start, stop), their ids, data and validity."""

    index: int
    start: int
    stop: int
    narration_ids: np.ndarray
    data: dict[str, np.ndarray]
    valid: np.ndarray


class FeatureStore:
    """Read access to one store; cheap to open (attributes, ids and the done record)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path}: no feature store here (no zarr.json)")
        self.group = zarr.open_group(self.path, mode="r")
        self.attrs = dict(self.group.attrs)
        if self.attrs.get("schema") != SCHEMA:
            raise StoreError(
                f"{self.path}: not a feature store of schema {SCHEMA} "
                f"(schema {self.attrs.get('schema')!r})"
            )
        missing = [k for k in ("kind", "rows", "shard_rows", "arrays", "manifest",
                               "manifest_hash") if k not in self.attrs]
        if missing:
            raise StoreError(f"{self.path}: store attributes {missing} are missing (zarr.json "
                             "edited or damaged); re-extract the store (--overwrite)")
        self.kind: str = self.attrs["kind"]
        self.rows = int(self.attrs["rows"])
        self.shard_rows = int(self.attrs["shard_rows"])
        self.num_shards = -(-self.rows // self.shard_rows)
        self.manifest: dict[str, Any] = self.attrs["manifest"]
        self.manifest_hash: str = self.attrs["manifest_hash"]
        if manifest_hash(self.manifest) != self.manifest_hash:
            raise StoreError(
                f"{self.path}: the manifest does not match its manifest_hash (the manifest or "
                "the hash in zarr.json was edited), so what produced these features is "
                "unknown; re-extract the store (--overwrite)"
            )
        self.arrays: dict[str, ArraySpec] = {
            k: ArraySpec(tuple(v["row_shape"]), v["dtype"]) for k, v in self.attrs["arrays"].items()
        }
        if self.rows:
            problem = _file_problem(_shard_file(self.group["narration_id"], self.path, 0),
                                    self.path, None)
            if problem:
                raise StoreError(f"{self.path}: {problem}, so its rows are unknown; re-extract "
                                 "the store (--overwrite)")
        self._ids: np.ndarray | None = None
        self._index: dict[str, int] | None = None
        self._raw: dict[str, _RawShards | None] = {}
        self.refresh()

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, kind={self.kind!r}, rows={self.rows}, "
            f"arrays={list(self.arrays)}, done={int(self.done.sum())}/{self.num_shards} shards)"
        )

    def __len__(self) -> int:
        return self.rows

    def refresh(self) -> None:
        """Re-read the completion record and errors (a writer may still be running).

        Shards marked done whose files are missing or damaged count as not written
        (`damaged` says why), so `complete` and `valid` never vouch for absent data.
        """
        self._raw = {}  # files may have been rewritten since they were mapped
        self.done = (
            np.asarray(self.group["done"][:], dtype=bool) if self.num_shards else np.zeros(0, bool)
        )
        self.damaged: dict[int, str] = damaged_shards(self.group, self.path, self.done)
        self.done[list(self.damaged)] = False
        errors = (
            np.asarray(self.group["error"][:], dtype=object) if self.rows else np.zeros(0, object)
        )
        written = np.repeat(self.done, self.shard_rows)[: self.rows]
        errors = np.where(written, errors, NOT_WRITTEN)
        self.errors: np.ndarray = errors
        self.valid: np.ndarray = errors == ""

    @property
    def complete(self) -> bool:
        """Every shard written, files intact (rows may still be failures: see `failures`)."""
        return bool(self.done.all())

    @property
    def split(self) -> str:
        """The split, by the store layout `<root>/<dataset>/<split>/<kind>-<name>.zarr`."""
        return self.path.resolve().parent.name

    def _unwritten(self, shards: Sequence[int], hint: str) -> StoreError:
        """The error for reading `shards` (not done): damaged files first, they are worse."""
        damaged = [int(k) for k in shards if int(k) in self.damaged]
        if damaged:
            return StoreError(
                f"{self.path}: {len(damaged)} shard(s) marked done have missing or damaged "
                f"files (first: shard {damaged[0]}: {self.damaged[damaged[0]]}); the store "
                "cannot be used as is: rerun the extraction command to rewrite them, or "
                "re-extract with --overwrite"
            )
        return StoreError(
            f"{self.path}: {len(shards)} of {self.num_shards} shards not written yet "
            f"(first: {shards[0]}); {hint}"
        )

    def require_complete(self) -> None:
        """StoreError unless every shard is written with intact files (damage named first)."""
        if not self.complete:
            raise self._unwritten(
                np.flatnonzero(~self.done).tolist(),
                "finish the extraction (rerun its command) or pass require_complete=False",
            )

    def _check_finite(self, name: str, rows: np.ndarray, value: np.ndarray | torch.Tensor
                      ) -> None:
        """Refuse rows holding NaN or inf (`rows`: their positions), naming the first."""
        if isinstance(value, np.ndarray):
            if value.dtype.kind != "f" or not len(value):
                return
            with warnings.catch_warnings():  # read-only memory maps: torch only reads here
                warnings.simplefilter("ignore", UserWarning)
                value = torch.from_numpy(value)
        if not value.is_floating_point() or not len(value):
            return
        # a row's max and min are NaN/inf exactly when the row holds one: two reductions,
        # 3-6x faster here than a boolean isfinite array over every element
        flat = value.reshape(len(value), -1)
        bad = (~(torch.isfinite(flat.amax(1)) & torch.isfinite(flat.amin(1)))).cpu().numpy()
        if bad.any():
            first = int(rows[np.argmax(bad)])
            raise StoreError(
                f"{self.path} (split {self.split!r}): {int(bad.sum())} row(s) of {name!r} hold "
                f"NaN or inf; first: row {first} ({self.narration_ids[first]!r}); the "
                "extraction produced non-finite features: re-extract the store (--overwrite)"
            )

    @property
    def narration_ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = (
                np.asarray(self.group["narration_id"][:], dtype=object)
                if self.rows
                else np.zeros(0, object)
            )
        return self._ids

    def index_of(self, narration_id: str | Sequence[str]) -> int | np.ndarray:
        """Row of a narration id (or rows of several); KeyError names the unknown ones."""
        if self._index is None:
            self._index = {nid: i for i, nid in enumerate(self.narration_ids)}
        if isinstance(narration_id, str):
            if narration_id not in self._index:
                raise KeyError(f"{self.path}: no row for narration id {narration_id!r}")
            return self._index[narration_id]
        unknown = [n for n in narration_id if n not in self._index]
        if unknown:
            raise KeyError(f"{self.path}: no rows for narration ids {unknown[:10]}")
        return np.asarray([self._index[n] for n in narration_id], dtype=np.int64)

    def failures(self) -> dict[str, str]:
        """{narration_id: error} of written rows that failed (zeros in the store)."""
        bad = np.flatnonzero((self.errors != "") & (self.errors != NOT_WRITTEN))
        return {str(self.narration_ids[i]): str(self.errors[i]) for i in bad}

    def _reader(self, name: str) -> _RawShards | None:
        if name not in self.arrays:
            raise KeyError(f"{self.path}: no array {name!r} (has {sorted(self.arrays)})")
        if name not in self._raw:
            array = self.group[name]
            exact = bool(self.attrs.get(ALL_CHUNKS))
            self._raw[name] = (_RawShards(array, self.path, exact)
                               if _RawShards.supported(array) else None)
        return self._raw[name]

    def _rows(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(self.rows)[index]
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < -self.rows or rows.max() >= self.rows):
            raise IndexError(f"{self.path}: row index out of range for {self.rows} rows")
        return np.where(rows < 0, rows + self.rows, rows)

    def _require_written(self, rows: np.ndarray) -> None:
        shards = np.unique(rows // self.shard_rows)
        undone = shards[~self.done[shards]]
        if len(undone):
            self.refresh()
            undone = shards[~self.done[shards]]
        if len(undone):
            if any(int(k) in self.damaged for k in undone):
                raise self._unwritten(undone.tolist(), "")
            raise StoreError(
                f"{self.path}: rows of shard(s) {undone[:10].tolist()} are not written yet "
                "(extraction incomplete: rerun it to finish the store)"
            )

    def read(
        self,
        index: int | slice | Sequence[int] | np.ndarray,
        arrays: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Rows by position, in the given order: {array name: (len(index), *row_shape)}.

        An int gives rows without the leading axis. Rows of unfinished shards raise
        StoreError; failed rows come back as zeros (see `valid`).
        """
        scalar = isinstance(index, int | np.integer)
        rows = self._rows(index)
        self._require_written(rows)
        out = {}
        for name in arrays or list(self.arrays):
            reader = self._reader(name)
            if reader is not None:
                value = reader.take(rows)
            else:
                self._require_files(name, np.unique(rows // self.shard_rows))
                unique, inverse = np.unique(rows, return_inverse=True)
                value = self.group[name].oindex[unique][inverse]
            self._check_finite(name, rows, value)
            out[name] = value[0] if scalar else value
        return out

    __getitem__ = read

    def get(
        self, narration_id: str | Sequence[str], arrays: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows by narration id (one id: no leading axis)."""
        index = self.index_of(narration_id)
        return self.read(index, arrays)

    def _require_files(self, name: str, shards: Sequence[int] | np.ndarray) -> None:
        """Zarr reads a missing shard file as fill values: check the files just before."""
        array = self.group[name]
        for shard in shards:
            problem = _file_problem(_shard_file(array, self.path, int(shard)), self.path, None)
            if problem:
                raise StoreError(f"{self.path}: shard {int(shard)} is damaged ({problem}); "
                                 "rerun the extraction command to rewrite it, or re-extract "
                                 "with --overwrite")

    def _shard_data(
        self, shard: int, arrays: Sequence[str], materialise: bool = True
    ) -> dict[str, np.ndarray]:
        start, stop = shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows)
        out = {}
        for name in arrays:
            reader = self._reader(name)
            if reader is None:
                self._require_files(name, [shard])
                out[name] = self.group[name][start:stop]
            else:  # materialised (in the prefetch thread) unless the caller copies anyway
                view = reader.slice(start, stop)
                out[name] = np.array(view) if materialise else view
        return out

    def iter_shards(
        self,
        arrays: Sequence[str] | None = None,
        prefetch: int = 2,
        shards: Sequence[int] | None = None,
        require_complete: bool = True,
    ) -> Iterator[Shard]:
        """Stream shards in order, a background thread reading up to `prefetch` ahead.

        For stores larger than memory; with `require_complete=False` unfinished shards are
        skipped instead of raising.
        """
        self.refresh()
        arrays = list(arrays or self.arrays)
        todo = list(range(self.num_shards) if shards is None else shards)
        undone = [k for k in todo if not self.done[k]]
        if undone and require_complete:
            raise self._unwritten(
                undone, "finish the extraction or pass require_complete=False"
            )
        todo = [k for k in todo if self.done[k]]
        slots: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop_event = threading.Event()

        def produce() -> None:
            try:
                for k in todo:
                    if stop_event.is_set():
                        return
                    data = self._shard_data(k, arrays)
                    start = k * self.shard_rows
                    for name, value in data.items():
                        self._check_finite(name, np.arange(start, start + len(value)), value)
                    item = (k, data)
                    while not stop_event.is_set():
                        try:
                            slots.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                slots.put(None)
            except BaseException as error:  # surfaced in the consumer
                slots.put(error)

        thread = threading.Thread(target=produce, daemon=True, name="feature-prefetch")
        thread.start()
        try:
            while True:
                item = slots.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                k, data = item
                start, stop = k * self.shard_rows, min((k + 1) * self.shard_rows, self.rows)
                yield Shard(
                    k, start, stop, self.narration_ids[start:stop], data, self.valid[start:stop]
                )
        finally:
            stop_event.set()
            thread.join(timeout=5)

    def load(
        self,
        device: str | torch.device = "cpu",
        arrays: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        require_complete: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The whole split as tensors on `device` ({array name: (N, *row_shape)}).

        Allocated once on the device and filled shard by shard straight from the mapped
        shard files (one host copy; on CUDA into two pinned buffers that alternate, so
        copying shard k+1 overlaps the upload of shard k and the split is never held in
        host memory). `dtype` converts floating arrays (masks stay bool). Unwritten rows
        are zeros when `require_complete=False`.
        """
        device = torch.device(device)
        arrays = list(arrays or self.arrays)
        self.refresh()
        if require_complete:
            self.require_complete()
        make = torch.empty if self.complete else torch.zeros
        out = {}
        for name in arrays:
            stored = _torch_dtype(self.arrays[name].dtype)
            wanted = dtype if dtype is not None and stored.is_floating_point else stored
            out[name] = make((self.rows, *self.arrays[name].row_shape), dtype=wanted, device=device)
        cuda = device.type == "cuda"
        staging: dict[tuple[str, int], torch.Tensor] = {}
        events: list[Any] = [None, None]
        for count, shard in enumerate(np.flatnonzero(self.done)):
            start, stop = shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows)
            data = self._shard_data(int(shard), arrays, materialise=False)
            if not cuda:
                for name, value in data.items():
                    out[name][start:stop].numpy()[...] = value
                continue
            slot = count % 2
            if events[slot] is not None:
                events[slot].synchronize()
            for name, value in data.items():
                key = (name, slot)
                if key not in staging:
                    staging[key] = torch.empty(
                        (self.shard_rows, *self.arrays[name].row_shape),
                        dtype=_torch_dtype(self.arrays[name].dtype),
                        pin_memory=True,
                    )
                buffer = staging[key][: stop - start]
                buffer.numpy()[...] = value
                out[name][start:stop].copy_(buffer, non_blocking=True)
            events[slot] = torch.cuda.Event()
            events[slot].record()
        if cuda:
            torch.cuda.synchronize(device)
        for name, tensor in out.items():  # one pass on the device: refuse NaN/inf rows
            self._check_finite(name, np.arange(self.rows), tensor)
        return out


def _torch_dtype(dtype: str) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open a store for reading (`FeatureStore(path)`)."""
    return FeatureStore(path)


def check_aligned(*stores: FeatureStore | str | os.PathLike) -> np.ndarray:
    """The common narration-id order of `stores`; AlignmentError at the first differing row."""
    opened = [s if isinstance(s, FeatureStore) else FeatureStore(s) for s in stores]
    if not opened:
        raise ValueError("check_aligned needs at least one store")
    first = opened[0]
    for other in opened[1:]:
        a, b = first.narration_ids, other.narration_ids
        n = min(len(a), len(b))
        diff = np.flatnonzero(a[:n] != b[:n])
        if len(diff):
            i = int(diff[0])
            raise AlignmentError(
                f"stores are not aligned: row {i} is {a[i]!r} in {first.path} but {b[i]!r} in "
                f"{other.path}; extract both from the same annotation file (same order)"
            )
        if len(a) != len(b):
            longer = first if len(a) > len(b) else other
            raise AlignmentError(
                f"stores are not aligned: {first.path} has {len(a)} rows, {other.path} has "
                f"{len(b)}; row {n} ({longer.narration_ids[n]!r}) is only in {longer.path}"
            )
    return first.narration_ids


# ---------------------------------------------------------------------------- failure report


def failure_report_path(path: str | os.PathLike) -> Path:
    """`<store stem>.failures.json` beside the store (`video-vitl.zarr` ->
    `video-vitl.failures.json`): the file the Makefile's chains wait for."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".zarr") + ".failures.json")


def write_failure_report(store: FeatureStore) -> Path:
    """Write the store's failure report beside it and return its path: `store`, `rows`,
    `shards_done`, `shards`, `complete` and `failed` ([{narration_id, error}] of written rows
    stored as zeros). Written whole to a temp file and renamed, so ranks (or an extraction
    and an import) finishing together leave one complete report."""
    report = {
        "store": str(store.path),
        "rows": store.rows,
        "shards_done": int(store.done.sum()),
        "shards": store.num_shards,
        "complete": store.complete,
        "failed": [{"narration_id": k, "error": v} for k, v in store.failures().items()],
    }
    path = failure_report_path(store.path)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temp, path)
    return path
