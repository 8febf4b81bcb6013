"""`python -m features.import`: HDF5 (both layouts), .npy and .pt folders, order, missing,
the clips' task."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from features.errors import HarnessError
from features.store import FeatureStore, StoreError, check_aligned
from fusion.data import check_task
from fusion.train import TrainConfig

importer = importlib.import_module("features.import")  # `import` is a keyword
REPO = Path(__file__).resolve().parents[2]
IDS = ["P01_01_0", "P01_01_1", "P01_01_2", "P01_01_3", "P02_01_0", "P02_01_1"]  # conftest


def clips(shape: tuple[int, ...] = (4, 8)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {nid: rng.standard_normal(shape).astype(np.float32) for nid in IDS}


def run(tiny_ek100: Path, source: Path, out: Path, *extra: str,
        task: str | None = "recognition") -> int:
    args = ["--source", str(source), "--annotations", str(tiny_ek100), "--out", str(out),
            "--shard-rows", "4", "--no-progress", *(["--task", task] if task else []),
            *extra]  # fmt: skip
    return importer.main(args)


def check(out: Path, data: dict[str, np.ndarray]) -> FeatureStore:
    store = FeatureStore(out)
    assert list(store.narration_ids) == IDS and store.complete and store.valid.all()
    want = np.stack([np.atleast_2d(data[i]) for i in IDS]).astype(np.float16)
    np.testing.assert_array_equal(store.load()["tokens"].numpy(), want)
    return store


def test_hdf5_dataset_per_clip(tiny_ek100: Path, tmp_path: Path) -> None:
    data = clips()
    with h5py.File(tmp_path / "orvit.h5", "w") as f:
        for nid in reversed(IDS):  # file order does not matter
            f.create_dataset(f"feats/{nid}", data=data[nid])
        f.create_dataset("feats/P09_99_0", data=data[IDS[0]])  # extra clips are ignored
    assert run(tiny_ek100, tmp_path / "orvit.h5", tmp_path / "s.zarr", "--tokens", "object") == 0
    store = check(tmp_path / "s.zarr", data)
    manifest = store.manifest
    assert manifest["backbone"]["name"] == "orvit" and manifest["tokens"] == "object"
    assert manifest["source_format"] == "hdf5:dataset-per-clip"
    assert len(manifest["source_digest"]) == 64 and manifest["token_shape"] == [4, 8]
    assert manifest["sources"]["row_order"].endswith("EPIC_100_validation.csv")
    assert manifest["clip"] == {"task": "recognition"}  # the field `extract` writes


def test_hdf5_features_and_ids_vectors(tiny_ek100: Path, tmp_path: Path) -> None:
    data = clips((16,))
    order = IDS[::-1]
    with h5py.File(tmp_path / "f.hdf5", "w") as f:
        f.create_dataset("features", data=np.stack([data[i] for i in order]))
        f.create_dataset("narration_id", data=np.array(order, dtype="S"))
    assert run(tiny_ek100, tmp_path / "f.hdf5", tmp_path / "s.zarr") == 0
    store = check(tmp_path / "s.zarr", data)
    assert store.arrays["tokens"].row_shape == (1, 16)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_folder_of_clips(tiny_ek100: Path, tmp_path: Path, suffix: str) -> None:
    data = clips()
    folder = tmp_path / "clips"
    folder.mkdir()
    for nid, value in data.items():
        if suffix == ".npy":
            np.save(folder / f"{nid}.npy", value)
        else:
            torch.save({"features": torch.from_numpy(value)}, folder / f"{nid}.pt")
    assert run(tiny_ek100, folder, tmp_path / "s.zarr") == 0
    check(tmp_path / "s.zarr", data)
    assert FeatureStore(tmp_path / "s.zarr").manifest["source_format"] == f"folder:{suffix}"
    # --order-from copies another store's rows: aligned by construction
    assert importer.main(["--source", str(folder), "--order-from", str(tmp_path / "s.zarr"),
                          "--out", str(tmp_path / "t.zarr"), "--no-progress",
                          "--task", "recognition"]) == 0  # fmt: skip
    check_aligned(tmp_path / "s.zarr", tmp_path / "t.zarr")


def test_missing_clips(tiny_ek100: Path, tmp_path: Path) -> None:
    data = clips()
    folder = tmp_path / "clips"
    folder.mkdir()
    for nid in IDS[:2] + IDS[3:5]:
        np.save(folder / f"{nid}.npy", data[nid])
    with pytest.raises(SystemExit, match="no features for 2 of 6 segments.*P01_01_2, P02_01_1"):
        run(tiny_ek100, folder, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    assert run(tiny_ek100, folder, tmp_path / "s.zarr", "--allow-missing") == 0
    store = FeatureStore(tmp_path / "s.zarr")
    assert store.valid.tolist() == [True, True, False, True, True, False]
    assert set(store.failures()) == {"P01_01_2", "P02_01_1"}
    assert not store.read([2])["tokens"].any()
    # the failure report extraction writes, which the Makefile's chains wait for
    report = json.loads((tmp_path / "s.failures.json").read_text())
    assert report == {"store": str(tmp_path / "s.zarr"), "rows": 6, "shards_done": 2,
                      "shards": 2, "complete": True, "failed": [
                          {"narration_id": nid, "error": f"missing from {folder}"}
                          for nid in ("P01_01_2", "P02_01_1")]}


def test_report_of_a_complete_import(tiny_ek100: Path, tmp_path: Path) -> None:
    """Every finished import writes the report, also a rerun that had nothing left to do
    (a deleted report comes back)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for nid, value in clips().items():
        np.save(folder / f"{nid}.npy", value)
    report = tmp_path / "s.failures.json"
    for _ in range(2):
        assert run(tiny_ek100, folder, tmp_path / "s.zarr") == 0
        assert json.loads(report.read_text())["failed"] == []
        assert json.loads(report.read_text())["complete"] is True
        report.unlink()


def test_shape_mismatch_and_bad_source(tiny_ek100: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for i, nid in enumerate(IDS):
        np.save(folder / f"{nid}.npy", np.zeros((4 + (i == 5), 8), np.float32))
    with pytest.raises(SystemExit, match=r"P02_01_1 has shape \(5, 8\)"):
        run(tiny_ek100, folder, tmp_path / "s.zarr")
    with pytest.raises(SystemExit, match="not an HDF5 file"):
        run(tiny_ek100, tmp_path / "x.csv", tmp_path / "t.zarr")


def test_command_line(tiny_ek100: Path, tmp_path: Path) -> None:
    with h5py.File(tmp_path / "orvit.h5", "w") as f:
        for nid, value in clips().items():
            f.create_dataset(nid, data=value)
    out = tmp_path / "features"
    result = subprocess.run(
        [sys.executable, "-m", "features.import", "--source", str(tmp_path / "orvit.h5"),
         "--annotations", str(tiny_ek100), "--root", str(out), "--dataset", "ek100",
         "--task", "recognition"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert FeatureStore(out / "ek100/validation/video-orvit.zarr").complete


class Payload:
    """Unpickling this creates `path`: a harmless stand-in for code in a downloaded file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def import_cli(tiny_ek100: Path, source: Path, out: Path,
               task: str | None = "recognition") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "features.import", "--source", str(source), "--annotations",
         str(tiny_ek100), "--out", str(out), "--no-progress",
         *(["--task", task] if task else [])],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_pt_clip_payload_is_refused_and_does_not_run(tiny_ek100: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    marker = tmp_path / "ran"
    for nid, value in clips().items():
        torch.save({"features": torch.from_numpy(value), "note": Payload(marker)},
                   folder / f"{nid}.pt")
    result = import_cli(tiny_ek100, folder, tmp_path / "s.zarr")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}/P01_01_0.pt: "), lines
    assert "weights_only=True" in lines[0] and "dict of tensors" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".h5"])
@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage\x00\x01" * 3])
def test_empty_or_garbage_source_files_are_one_line(
    tiny_ek100: Path, tmp_path: Path, suffix: str, content: bytes
) -> None:
    if suffix == ".h5":
        source = bad = tmp_path / "orvit.h5"
    else:
        source = tmp_path / "clips"
        source.mkdir()
        for nid, value in clips().items():
            if suffix == ".npy":
                np.save(source / f"{nid}.npy", value)
            else:
                torch.save(torch.from_numpy(value), source / f"{nid}.pt")
        bad = source / f"{IDS[0]}{suffix}"
    bad.write_bytes(content)
    result = import_cli(tiny_ek100, source, tmp_path / "s.zarr")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), lines
    assert ("empty file" in lines[0]) == (not content)


def npy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for nid, value in clips().items():
        np.save(folder / f"{nid}.npy", value)
    return folder


def test_an_import_must_say_which_tasks_clips_it_holds(tiny_ek100: Path, tmp_path: Path) -> None:
    """No --task: refused in one line before anything is read or written (a default would
    label the other task's dump without anyone saying so, and training would accept it)."""
    folder = npy_folder(tmp_path)
    result = import_cli(tiny_ek100, folder, tmp_path / "s.zarr", task=None)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: pass --task recognition")
    assert "--task anticipation" in lines[0]
    with pytest.raises(HarnessError, match="pass --task recognition"):
        run(tiny_ek100, folder, tmp_path / "s.zarr", task=None)
    assert not (tmp_path / "s.zarr").exists()


def test_the_recorded_task_is_checked_by_training(tiny_ek100: Path, tmp_path: Path) -> None:
    """`--task anticipation` lands in the manifest as `clip.task`; a recognition run refuses
    the store (an anticipation run takes it), as it does an extracted one."""
    assert run(tiny_ek100, npy_folder(tmp_path), tmp_path / "s.zarr", task="anticipation") == 0
    store = FeatureStore(tmp_path / "s.zarr")
    assert store.manifest["clip"] == {"task": "anticipation"}
    check_task(TrainConfig(task="anticipation"), {"video": store})
    with pytest.raises(StoreError, match=r"s.zarr: holds anticipation clips, but --task is "
                                         r"recognition; pass a store of recognition clips"):
        check_task(TrainConfig(task="recognition"), {"video": store})
