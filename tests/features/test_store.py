"""Feature store: round trip, manifests, resume checks, alignment, streaming, raw reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from features.store import (
    AlignmentError,
    ArraySpec,
    FeatureStore,
    StoreError,
    check_aligned,
    make_manifest,
    manifest_hash,
    open_writer,
    store_path,
)

IDS = [f"P01_01_{i}" for i in range(10)]


def write_store(
    path: Path,
    ids: list[str] = IDS,
    shard_rows: int = 4,
    seed: int = 0,
    errors: dict[int, str] | None = None,
    shards: list[int] | None = None,
    **manifest: object,
) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((len(ids), 3, 5)).astype(np.float16)
    writer = open_writer(
        path,
        ids,
        {"tokens": ArraySpec((3, 5))},
        make_manifest(backbone="demo", **manifest),
        kind="video",
        shard_rows=shard_rows,
    )
    for k in writer.pending_shards() if shards is None else shards:
        start, stop = writer.shard_range(k)
        errs = [(errors or {}).get(i, "") for i in range(start, stop)]
        writer.write_shard(k, {"tokens": data[start:stop]}, errs)
    return data


def test_round_trip_random_access_and_ids(tmp_path: Path) -> None:
    path = store_path(tmp_path, "ek100", "validation", "video", "demo")
    assert path == tmp_path / "ek100/validation/video-demo.zarr"
    data = write_store(path)
    store = FeatureStore(path)
    assert len(store) == 10 and store.complete and store.valid.all()
    assert list(store.narration_ids) == IDS
    index = np.array([9, 0, 5, 5, 3])  # any order, repeats, across shards and the edge shard
    np.testing.assert_array_equal(store.read(index)["tokens"], data[index])
    np.testing.assert_array_equal(store[7]["tokens"], data[7])
    np.testing.assert_array_equal(store.read(slice(2, 9))["tokens"], data[2:9])
    np.testing.assert_array_equal(store.get("P01_01_8")["tokens"], data[8])
    np.testing.assert_array_equal(store.get(["P01_01_1", "P01_01_0"])["tokens"], data[[1, 0]])
    with pytest.raises(KeyError, match="P01_99"):
        store.get("P01_99")
    loaded = store.load()
    assert loaded["tokens"].dtype == torch.float16
    np.testing.assert_array_equal(loaded["tokens"].numpy(), data)
    assert store.load(dtype=torch.float32)["tokens"].dtype == torch.float32
    # the raw memory-mapped path and zarr itself agree
    assert store._reader("tokens") is not None
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["tokens"][:], data)


def test_layout_is_sharded_zarr_v3(tmp_path: Path) -> None:
    write_store(tmp_path / "s.zarr")
    meta = json.loads((tmp_path / "s.zarr/tokens/zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["data_type"] == "float16"
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [1, 3, 5]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 3, 5]
    assert sorted(p.name for p in (tmp_path / "s.zarr/tokens/c").iterdir()) == ["0", "1", "2"]


def test_manifest_and_hash(tmp_path: Path) -> None:
    write_store(tmp_path / "s.zarr", checkpoint_sha256="ab" * 32, frames=16)
    store = FeatureStore(tmp_path / "s.zarr")
    manifest = store.manifest
    assert manifest["backbone"] == "demo" and manifest["frames"] == 16
    assert {"created", "environment"} <= set(manifest)
    assert "torch" in manifest["environment"]["packages"]
    assert manifest["environment"]["git_revision"]
    assert store.manifest_hash == manifest_hash(manifest)
    later = dict(manifest, created="2000-01-01T00:00:00+00:00")
    assert manifest_hash(later) == store.manifest_hash  # creation time is not identity
    moved = dict(manifest, sources={"videos": "elsewhere"}, environment={})
    assert manifest_hash(moved) == store.manifest_hash  # nor paths and host
    assert manifest_hash(dict(manifest, frames=8)) != store.manifest_hash


def test_reopen_resumes_and_refuses_other_configs(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, shards=[0, 2])
    store = FeatureStore(path)
    assert not store.complete and store.done.tolist() == [True, False, True]
    assert store.valid.tolist() == [True] * 4 + [False] * 4 + [True] * 2
    with pytest.raises(StoreError, match="shard.*1.*not written"):
        store.read([5])
    with pytest.raises(StoreError, match="not written yet"):
        store.load()
    partial = store.load(require_complete=False)["tokens"]
    assert torch.all(partial[4:8] == 0)
    writer = open_writer(
        path, IDS, {"tokens": ArraySpec((3, 5))}, make_manifest(backbone="demo"), "video", 4
    )
    assert writer.pending_shards() == [1]
    assert writer.pending_shards(rank=1, world_size=2) == [1]
    assert writer.pending_shards(rank=0, world_size=2) == []
    with pytest.raises(StoreError, match="manifest.backbone: 'demo' vs 'vitl'"):
        open_writer(path, IDS, {"tokens": ArraySpec((3, 5))}, {"backbone": "vitl"}, "video", 4)
    with pytest.raises(StoreError, match="narration_id row 9"):
        ids = IDS[:9] + ["other"]
        open_writer(path, ids, {"tokens": ArraySpec((3, 5))}, {"backbone": "demo"}, "video", 4)
    with pytest.raises(StoreError, match="shard_rows"):
        open_writer(path, IDS, {"tokens": ArraySpec((3, 5))}, {"backbone": "demo"}, "video", 5)
    fresh = open_writer(
        path, IDS, {"tokens": ArraySpec((3, 5))}, {"backbone": "vitl"}, "video", 4, overwrite=True
    )
    assert fresh.pending_shards() == [0, 1, 2]


def test_write_shard_checks_shapes(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "s.zarr", IDS, {"tokens": ArraySpec((3, 5))}, {}, "video", 4)
    with pytest.raises(StoreError, match=r"expected \(4, 3, 5\)"):
        writer.write_shard(0, {"tokens": np.zeros((3, 3, 5))})
    with pytest.raises(StoreError, match="expected"):
        writer.write_shard(0, {"other": np.zeros((4, 3, 5))})
    assert FeatureStore(tmp_path / "s.zarr").done.tolist() == [False] * 3


def test_failures_and_text_arrays(tmp_path: Path) -> None:
    path = tmp_path / "text.zarr"
    ids = IDS[:5]
    arrays = {
        "verb_tokens": ArraySpec((6, 4)),
        "verb_mask": ArraySpec((6,), "bool"),
        "noun_tokens": ArraySpec((6, 4)),
        "noun_mask": ArraySpec((6,), "bool"),
    }
    writer = open_writer(path, ids, arrays, {"text_model": "tiny"}, "text", shard_rows=8)
    mask = np.arange(6)[None] < np.array([[2], [6], [3], [1], [4]])
    tokens = np.where(mask[..., None], np.full((5, 6, 4), 1.5), 0).astype(np.float16)
    writer.write_shard(
        0,
        {"verb_tokens": tokens, "verb_mask": mask, "noun_tokens": -tokens, "noun_mask": mask},
        ["", "", "bad question", "", ""],
    )
    store = FeatureStore(path)
    assert store.kind == "text" and store.complete
    assert store.failures() == {"P01_01_2": "bad question"}
    assert store.valid.tolist() == [True, True, False, True, True]
    row = store.get("P01_01_1")
    assert row["verb_mask"].dtype == bool and row["verb_mask"].all()
    loaded = store.load(arrays=["noun_tokens", "noun_mask"], dtype=torch.float32)
    assert set(loaded) == {"noun_tokens", "noun_mask"}
    assert loaded["noun_mask"].dtype == torch.bool
    np.testing.assert_array_equal(loaded["noun_mask"].numpy(), mask)
    assert loaded["noun_tokens"].dtype == torch.float32


def test_alignment(tmp_path: Path) -> None:
    write_store(tmp_path / "a.zarr")
    write_store(tmp_path / "b.zarr", seed=1)
    assert list(check_aligned(tmp_path / "a.zarr", tmp_path / "b.zarr")) == IDS
    swapped = IDS[:3] + [IDS[4], IDS[3]] + IDS[5:]
    write_store(tmp_path / "c.zarr", ids=swapped)
    with pytest.raises(AlignmentError, match=r"row 3 is 'P01_01_3' in .*a\.zarr but 'P01_01_4'"):
        check_aligned(tmp_path / "a.zarr", tmp_path / "c.zarr")
    write_store(tmp_path / "d.zarr", ids=IDS[:8])
    with pytest.raises(AlignmentError, match="10 rows.*8.*row 8 .'P01_01_8'"):
        check_aligned(tmp_path / "a.zarr", tmp_path / "d.zarr")


def test_streaming_prefetch(tmp_path: Path) -> None:
    ids = [f"P02_{i:03d}" for i in range(50)]
    data = write_store(tmp_path / "s.zarr", ids=ids, shard_rows=8, errors={17: "broken"})
    store = FeatureStore(tmp_path / "s.zarr")
    shards = list(store.iter_shards(prefetch=1))
    assert [s.index for s in shards] == list(range(7))
    assert shards[-1].start == 48 and shards[-1].stop == 50
    np.testing.assert_array_equal(np.concatenate([s.data["tokens"] for s in shards]), data)
    assert [i for s in shards for i in s.narration_ids] == ids
    assert not shards[2].valid[1] and shards[2].valid.sum() == 7
    # stopping early releases the prefetch thread
    for shard in store.iter_shards(prefetch=3):
        if shard.index == 1:
            break
    only = list(store.iter_shards(shards=[3, 5]))
    assert [s.index for s in only] == [3, 5]


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore(tmp_path)
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(StoreError, match="schema"):
        FeatureStore(tmp_path / "plain.zarr")


@pytest.mark.gpu
def test_load_to_cuda(tmp_path: Path) -> None:
    data = write_store(tmp_path / "s.zarr", shard_rows=3)
    loaded = FeatureStore(tmp_path / "s.zarr").load(device="cuda")
    assert loaded["tokens"].is_cuda
    np.testing.assert_array_equal(loaded["tokens"].cpu().numpy(), data)


# ------------------------------------------------------------- stores that cannot lie


def shard_file(path: Path, shard: int, array: str = "tokens") -> Path:
    return path / array / "c" / str(shard) / "0" / "0"


@pytest.mark.parametrize("damage", ["delete", "truncate", "empty"])
def test_damaged_shard_file_is_refused_not_read_as_zeros(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.zarr"
    data = write_store(path)
    file = shard_file(path, 1)
    if damage == "delete":
        file.unlink()
    elif damage == "truncate":
        file.write_bytes(file.read_bytes()[:-40])
    else:
        file.write_bytes(b"")
    store = FeatureStore(path)
    reason = {"delete": "missing", "truncate": "expected 188", "empty": "empty"}[damage]
    assert not store.complete and store.done.tolist() == [True, False, True]
    assert reason in store.damaged[1] and "tokens/c/1/0/0" in store.damaged[1]
    assert store.valid.tolist() == [True] * 4 + [False] * 4 + [True] * 2
    with pytest.raises(StoreError, match=rf"s\.zarr: 1 shard.*damaged.*shard 1.*{reason}"):
        store.load()
    with pytest.raises(StoreError, match="damaged"):
        store.read([5])
    with pytest.raises(StoreError, match="damaged"):
        list(store.iter_shards())
    np.testing.assert_array_equal(store.read([0, 9])["tokens"], data[[0, 9]])  # intact shards
    # a rerun of the extraction (same config) rewrites exactly the damaged shard
    writer = open_writer(
        path, IDS, {"tokens": ArraySpec((3, 5))}, make_manifest(backbone="demo"), "video", 4
    )
    assert writer.pending_shards() == [1]
    writer.write_shard(1, {"tokens": data[4:8]})
    repaired = FeatureStore(path)
    assert repaired.complete and not repaired.damaged
    np.testing.assert_array_equal(repaired.load()["tokens"].numpy(), data)


def test_shard_deleted_after_open_is_refused_on_every_read_path(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write_store(path)
    store = FeatureStore(path)
    assert store.complete
    shard_file(path, 2).unlink()
    with pytest.raises(StoreError, match="shard 2 is damaged.*missing"):
        store.read([9])  # memory-mapped raw path, without a refresh
    with pytest.raises(StoreError, match="damaged"):
        store.load()  # refreshes: the store no longer claims to be complete
    assert not FeatureStore(path).complete


def test_compressed_store_with_a_deleted_shard_is_refused(tmp_path: Path) -> None:
    from zarr.codecs import ZstdCodec

    path = tmp_path / "z.zarr"
    writer = open_writer(path, IDS, {"tokens": ArraySpec((3, 5))}, {"backbone": "demo"},
                         "video", 4, compressors=ZstdCodec())
    for k in writer.pending_shards():
        start, stop = writer.shard_range(k)
        writer.write_shard(k, {"tokens": np.ones((stop - start, 3, 5))})
    store = FeatureStore(path)
    assert store.complete and store._reader("tokens") is None  # zarr's own read path
    shard_file(path, 0).unlink()
    with pytest.raises(StoreError, match="shard 0 is damaged"):
        store.read([1])  # opened before the deletion
    reopened = FeatureStore(path)
    assert not reopened.complete and "missing" in reopened.damaged[0]
    with pytest.raises(StoreError, match="damaged"):
        reopened.load()


def test_deleted_error_chunk_does_not_make_failed_rows_valid(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, errors={5: "video file not found"})
    (path / "error" / "c" / "1").unlink()  # would read back as "" (valid) for every row
    store = FeatureStore(path)
    assert not store.complete and not store.valid[4:8].any()
    assert "error/c/1 is missing" in store.damaged[1]


def test_zero_rows_are_written_in_full(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    writer = open_writer(path, IDS, {"tokens": ArraySpec((3, 5))}, {}, "video", 4)
    for k in writer.pending_shards():  # failed clips: zeros, which zarr would leave out
        start, stop = writer.shard_range(k)
        rows = stop - start
        writer.write_shard(k, {"tokens": np.zeros((rows, 3, 5))}, ["failed"] * rows)
    store = FeatureStore(path)
    assert store.complete and not store.damaged and not store.valid.any()
    assert shard_file(path, 0).stat().st_size == 4 * 3 * 5 * 2 + 4 * 16 + 4
    assert store._reader("tokens")._shard(0) is not None  # mapped raw, not via zarr


@pytest.mark.parametrize("edit", ["manifest", "hash"])
def test_edited_manifest_or_hash_is_refused(tmp_path: Path, edit: str) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, frames=16)
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    if edit == "manifest":
        meta["attributes"]["manifest"]["frames"] = 32
    else:
        meta["attributes"]["manifest_hash"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"s\.zarr: the manifest does not match its "
                                         r"manifest_hash.*re-extract"):
        FeatureStore(path)


def write_rows(path: Path, data: np.ndarray) -> None:
    writer = open_writer(path, IDS, {"tokens": ArraySpec((3, 5))}, {"backbone": "demo"},
                         "video", 4)
    for k in writer.pending_shards():
        start, stop = writer.shard_range(k)
        writer.write_shard(k, {"tokens": data[start:stop]})


def test_nan_row_is_refused_by_load(tmp_path: Path) -> None:
    data = np.ones((10, 3, 5), dtype=np.float16)
    data[[6, 8], 1, 2] = np.nan
    data[3, 0, 4] = -np.inf
    path = store_path(tmp_path, "ek100", "train", "video", "demo")
    write_rows(path, data)
    store = FeatureStore(path)
    with pytest.raises(StoreError, match=r"video-demo\.zarr \(split 'train'\): 3 row\(s\) of "
                                         r"'tokens' hold NaN or inf; first: row 3 \('P01_01_3'\)"):
        store.load()
    np.testing.assert_array_equal(store.read([0, 7])["tokens"], data[[0, 7]])  # clean rows


def test_inf_row_is_refused_in_streamed_reads(tmp_path: Path) -> None:
    data = np.ones((10, 3, 5), dtype=np.float16)
    data[9, 0, 0] = np.inf
    path = store_path(tmp_path, "ek100", "validation", "video", "demo")
    write_rows(path, data)
    store = FeatureStore(path)
    shards = store.iter_shards(prefetch=1)
    assert next(shards).index == 0 and next(shards).index == 1
    with pytest.raises(StoreError, match=r"\(split 'validation'\): 1 row.*row 9 \('P01_01_9'\)"):
        next(shards)
    with pytest.raises(StoreError, match="row 9"):
        store.read(slice(8, 10))
