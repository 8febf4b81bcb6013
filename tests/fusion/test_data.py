"""fusion.data refuses stores that lie and leaves failed clips out of training and scoring.

Real parts: the synthetic generator's annotations, real feature stores (rows that failed
extraction written as `extract video --allow-missing` writes them: zeros plus an error),
`load_features`, `train` and the `python -m fusion.train` CLI in a subprocess.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.synthetic import SyntheticConfig, plan_segments, plan_videos, write_annotations
from features.annotations import load_split as load_annotations
from features.store import ArraySpec, FeatureStore, StoreError, open_writer, store_path
from fusion.data import FeatureSplit, StreamedSplit, check_compatible, load_features, load_split
from fusion.train import TrainConfig, train
from tests.cli import one_error_line

REPO = Path(__file__).resolve().parents[2]
TEXT_STORE = "tiny-roberta-template-paper"


def write_store(path: Path, ids: list[str], arrays: dict[str, np.ndarray], kind: str,
                failed: dict[int, str] | None = None, **manifest: object) -> None:
    """A complete store; rows in `failed` are zeros with their error, as extraction writes."""
    specs = {k: ArraySpec(v.shape[1:], str(v.dtype)) for k, v in arrays.items()}
    writer = open_writer(path, ids, specs, {"extractor": "test", "kind": kind, **manifest},
                         kind, shard_rows=16)
    errors = np.array([(failed or {}).get(i, "") for i in range(len(ids))], dtype=object)
    for shard in writer.pending_shards():
        start, stop = writer.shard_range(shard)
        data = {k: v[start:stop].copy() for k, v in arrays.items()}
        for value in data.values():
            value[errors[start:stop] != ""] = 0
        writer.write_shard(shard, data, errors[start:stop].tolist())


def make_dataset(root: Path, failed: dict[str, dict[int, str]] | None = None,
                 val_width: int = 16, val_manifest: dict | None = None,
                 manifest: dict | None = None,
                 zero_rows: dict[str, list[int] | slice] | None = None,
                 task: str | None = "recognition") -> Path:
    """Annotations + video/text stores of train and validation, with a learnable signal;
    the video stores record `task` as `clip.task` (None: no task, as an old import)."""
    config = SyntheticConfig(out=root, videos=6, segments_per_video=16, num_verbs=5,
                             num_nouns=6, workers=1)
    videos = plan_videos(config)
    segments, lengths = plan_segments(config, videos, np.random.default_rng(0))
    write_annotations(config, videos, segments, lengths)
    rng = np.random.default_rng(1)
    for split in ("train", "validation"):
        frame = load_annotations(root / "annotations", split).segments
        ids = frame["narration_id"].astype(str).tolist()
        n, width = len(ids), val_width if split == "validation" else 16
        verb = frame["verb_class"].to_numpy()
        video = rng.normal(size=(n, 4, width)) + 3 * (np.arange(width) % 5 == verb[:, None])[
            :, None]
        mask = np.arange(6) < rng.integers(2, 7, size=n)[:, None]
        video[(zero_rows or {}).get(split, [])] = 0  # valid rows, all-zero features
        extra = {**({"clip": {"task": task}} if task else {}), **(manifest or {}),
                 **((val_manifest or {}) if split == "validation" else {})}
        write_store(store_path(root / "features", root.name, split, "video", "demo"), ids,
                    {"tokens": video.astype(np.float16)}, "video",
                    (failed or {}).get(split), **extra)
        write_store(store_path(root / "features", root.name, split, "text", TEXT_STORE), ids,
                    {"verb_tokens": rng.normal(size=(n, 6, 8)).astype(np.float16),
                     "verb_mask": mask,
                     "noun_tokens": rng.normal(size=(n, 6, 8)).astype(np.float16),
                     "noun_mask": mask}, "text")
    return root


def config_for(data: Path, tmp_path: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(data=data, epochs=2, batch_size=8, peak_lr=1e-2, ssm_peak_lr=1e-2,
                       warmup_epochs=1, label_smoothing=0.0, device="cpu", track=False,
                       out=tmp_path / "runs",
                       head=dataclasses.replace(TrainConfig().head, d_model=16, d_state=4))
    return dataclasses.replace(base, **overrides)


def train_cli(data: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    args = ["--data", str(data), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--no-track", "--out", str(tmp_path / "runs"), "--head.d-model", "16",
            "--head.d-state", "4", "--run-name", "cli"]
    return subprocess.run([sys.executable, "-m", "fusion.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def video_store(data: Path, split: str) -> Path:
    return store_path(data / "features", data.name, split, "video", "demo")


def test_training_refuses_a_store_with_a_deleted_shard(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "demo")
    store = video_store(data, "train")
    (store / "tokens" / "c" / "1" / "0" / "0").unlink()
    assert not FeatureStore(store).complete
    with pytest.raises(StoreError, match="shard 1.*tokens/c/1/0/0 is missing"):
        load_features(config_for(data, tmp_path), torch.device("cpu"))
    result = train_cli(data, tmp_path)
    lines = [one_error_line(result)]
    assert str(store) in lines[0] and "damaged" in lines[0]
    assert not (tmp_path / "runs" / "cli" / "last.pt").exists()


def test_failed_rows_are_excluded_and_counted(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    failed = {"train": {i: "video file not found" for i in (0, 5, 17, 40)},
              "validation": {3: "segment past the end of its video"}}
    data = make_dataset(tmp_path / "demo", failed=failed)
    train_ids = load_annotations(data / "annotations", "train").segments["narration_id"]
    val_ids = load_annotations(data / "annotations", "validation").segments["narration_id"]
    config = config_for(data, tmp_path)
    train_split, val_split, info = load_features(config, torch.device("cpu"))
    assert info["excluded"] == {"video.train": 4, "text.train": 0, "video.validation": 1,
                                "text.validation": 0}
    assert info["streamed"] is False  # small stores load whole
    assert len(train_split) == len(train_ids) - 4 and len(val_split) == len(val_ids) - 1
    assert train_split.narration_ids == [n for i, n in enumerate(train_ids) if i not in
                                         failed["train"]]
    assert not (train_split.inputs["video"] == 0).all(-1).all(-1).any()  # no zero rows left
    assert len(info["metric_extra"]["participant_ids"]) == len(val_split)
    err = capsys.readouterr().err
    assert f"train: excluded 4 of {len(train_ids)} rows that failed extraction (4 in " \
           f"{video_store(data, 'train')}" in err
    assert f"validation: excluded 1 of {len(val_ids)}" in err
    # a training run scores only the valid validation rows
    result = train(dataclasses.replace(config, run_name="excluded"))
    scored = np.load(Path(result["folder"]) / "predictions_best.npz")["narration_id"]
    assert len(scored) == len(val_ids) - 1 and val_ids[3] not in set(scored.tolist())


def test_streamed_split_skips_failed_rows(tmp_path: Path) -> None:
    failed = {"train": {i: "broken" for i in (1, 2, 16, 31, 50)}}
    data = make_dataset(tmp_path / "demo", failed=failed)
    device = torch.device("cpu")
    loaded, _, _ = load_split(config_for(data, tmp_path, stream="never"), "train", device)
    streamed, _, _ = load_split(config_for(data, tmp_path, stream="always"), "train", device)
    assert isinstance(streamed, StreamedSplit) and len(streamed) == len(loaded)
    assert streamed.narration_ids == loaded.narration_ids
    streamed.window_rows = 16  # several windows, each spanning excluded rows
    ordered = torch.cat([b.inputs["video"] for b in streamed.batches(7)])
    assert torch.equal(ordered, loaded.inputs["video"])  # the valid rows, in file order
    verbs = torch.cat([b.verb for b in streamed.batches(7)])
    assert torch.equal(verbs, loaded.verb)
    shuffled = list(streamed.batches(5, torch.Generator().manual_seed(0)))
    assert sum(len(b.index) for b in shuffled) == len(loaded)


@pytest.mark.parametrize("mismatch", ["width", "extractor"])
def test_train_and_validation_stores_must_match(tmp_path: Path, mismatch: str) -> None:
    if mismatch == "width":
        data = make_dataset(tmp_path / "demo", val_width=12)
        expected = r"array tokens: .*\(4, 16\).* vs .*\(4, 12\)"
    else:
        data = make_dataset(tmp_path / "demo", val_manifest={"checkpoint_sha256": "ab" * 32})
        expected = "manifest.checkpoint_sha256: '<absent>' vs 'abab"
    config = config_for(data, tmp_path, run_name="mismatch")
    with pytest.raises(StoreError, match=expected) as error:
        train(config)
    message = str(error.value)
    assert str(video_store(data, "train")) in message
    assert str(video_store(data, "validation")) in message
    assert not (tmp_path / "runs" / "mismatch" / "last.pt").exists()  # refused before a step


def test_stores_imported_from_one_dump_per_split_match(tmp_path: Path) -> None:
    """`features.import` of a dump per split: the dumps' digests and missing-row counts
    describe the split's input, not the extractor; another backbone is still refused."""
    imported = {"extractor": "python -m features.import", "source_format": "hdf5"}
    data = make_dataset(tmp_path / "demo", manifest={**imported, "source_digest": "a" * 64,
                                                     "missing": 0},
                        val_manifest={**imported, "source_digest": "b" * 64, "missing": 2})
    load_features(config_for(data, tmp_path), torch.device("cpu"))
    other = make_dataset(tmp_path / "other", manifest=imported,
                         val_manifest={**imported, "backbone": {"name": "vitl"}})
    with pytest.raises(StoreError, match="manifest.backbone"):
        load_features(config_for(other, tmp_path), torch.device("cpu"))


def test_stores_whose_questions_differ_in_sample_provenance_match(tmp_path: Path) -> None:
    """The anticipation chain's text stores: train questions from in-sample predictions
    (`predictions_in_sample` true), validation's from held-out ones (false): a split's input,
    so they train together; another generator is still refused."""
    rng = np.random.default_rng(0)
    ids = [f"P01_01_{i}" for i in range(4)]
    arrays = {"verb_tokens": rng.normal(size=(4, 6, 8)).astype(np.float16),
              "verb_mask": np.ones((4, 6), bool)}
    stores = {}
    for name, manifest in (("train", {"generator": "predictions", "predictions_in_sample": True}),
                           ("validation", {"generator": "predictions",
                                           "predictions_in_sample": False}),
                           ("other", {"generator": "template", "predictions_in_sample": False})):
        write_store(tmp_path / f"{name}.zarr", ids, arrays, "text", **manifest)
        stores[name] = {"text": FeatureStore(tmp_path / f"{name}.zarr")}
    check_compatible(stores["train"], stores["validation"])
    with pytest.raises(StoreError, match="manifest.generator: 'predictions' vs 'template'"):
        check_compatible(stores["train"], stores["other"])


def test_missing_store_is_a_store_error(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "demo")
    with pytest.raises(StoreError, match="video-vitl.zarr: no video feature store.*make extract"):
        load_features(config_for(data, tmp_path, backbone="vitl"), torch.device("cpu"))


def test_a_store_of_the_other_tasks_clips_is_refused(tmp_path: Path) -> None:
    """An anticipation run on recognition clips (the action itself) would report recognition
    as anticipation: refused, naming the store and both tasks."""
    data = make_dataset(tmp_path / "demo", task="recognition")
    load_features(config_for(data, tmp_path), torch.device("cpu"))  # same task: fine
    with pytest.raises(StoreError, match=r"video-demo.zarr: holds recognition clips, but "
                                         r"--task is anticipation; pass a store"):
        load_features(config_for(data, tmp_path, task="anticipation", video_store="demo",
                                 text_store=TEXT_STORE), torch.device("cpu"))


def test_a_store_that_records_no_task_is_refused(tmp_path: Path) -> None:
    """A video store without `clip.task` (a `features.import` from before --task) may hold
    either task's clips: refused for both tasks, in one line naming the store and the fix;
    a questions-only run opens no video store, so has nothing to refuse."""
    data = make_dataset(tmp_path / "demo", task=None)
    assert "clip" not in FeatureStore(video_store(data, "train")).manifest
    for task in ("recognition", "anticipation"):
        config = config_for(data, tmp_path, task=task, video_store="demo", text_store=TEXT_STORE)
        with pytest.raises(StoreError) as error:
            load_features(config, torch.device("cpu"))
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"{video_store(data, 'train')}: its manifest records no "
                                  "clip.task")
        assert f"features.import --task {task} --overwrite" in message
        assert f"make extract TASK={task}" in message
    load_features(config_for(data, tmp_path, video="none"), torch.device("cpu"))


def test_all_zero_video_rows_are_counted_and_an_all_zero_split_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """All-zero clips are placeholders, never a backbone's output: counted on stderr and in
    the info (an MLflow tag); a split of nothing but zeros is no features at all."""
    data = make_dataset(tmp_path / "some", zero_rows={"train": [1, 4, 9]})
    _, _, info = load_features(config_for(data, tmp_path), torch.device("cpu"))
    assert info["zero_rows"] == {"video.train": 3, "video.validation": 0}
    assert "train split: 3 of " in capsys.readouterr().err
    data = make_dataset(tmp_path / "all", zero_rows={"validation": slice(None)})
    with pytest.raises(StoreError, match="validation split: every video row is all zeros"):
        load_features(config_for(data, tmp_path), torch.device("cpu"))


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_are_the_permutations_slices_gathered_in_groups(monkeypatch, drop_last) -> None:
    """`FeatureSplit.batches` gathers several batches at once and slices them: the batches
    are still the permutation's consecutive rows (a group boundary inside the epoch, a short
    last batch), and in file order they are views of the split itself."""
    from fusion import data

    monkeypatch.setattr(data, "GATHER_BATCHES", 2)
    n = 23
    split = FeatureSplit([str(i) for i in range(n)],
                         {"video": torch.arange(n * 6.0).reshape(n, 3, 2)},
                         {"video": torch.rand(n, 3) > 0.5},
                         torch.arange(n), torch.arange(n) % 4)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    batches = list(split.batches(4, torch.Generator().manual_seed(3), drop_last=drop_last))
    assert [len(b.index) for b in batches] == [4] * 5 + ([] if drop_last else [3])
    for i, got in enumerate(batches):
        want = split.batch(order[4 * i : 4 * i + 4])
        assert torch.equal(got.index, want.index)
        assert torch.equal(got.inputs["video"], want.inputs["video"])
        assert torch.equal(got.masks["video"], want.masks["video"])
        assert torch.equal(got.verb, want.verb) and torch.equal(got.noun, want.noun)
    ordered = list(split.batches(5, drop_last=drop_last))
    assert torch.equal(torch.cat([b.index for b in ordered]),
                       torch.arange(20 if drop_last else n))
    assert ordered[1].inputs["video"].data_ptr() == split.inputs["video"][5].data_ptr()


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("seed", [None, 5])
def test_row_batches_are_the_batches_not_gathered(drop_last, seed) -> None:
    """`row_batches` (what a CUDA-graphed step gathers itself) names the rows `batches`
    yields, batch for batch, from the same generator draws."""
    n = 37
    split = FeatureSplit([str(i) for i in range(n)],
                         {"video": torch.randn(n, 4, 8).to(torch.bfloat16)},
                         {"video": torch.rand(n, 8) > 0.5},
                         torch.arange(n), torch.arange(n) % 4)

    def generator() -> torch.Generator | None:
        return None if seed is None else torch.Generator().manual_seed(seed)

    rows = list(split.row_batches(8, generator(), drop_last=drop_last))
    batches = list(split.batches(8, generator(), drop_last=drop_last))
    assert [len(r.index) for r in rows] == [len(b.index) for b in batches]
    assert len(rows) == (4 if drop_last else 5)
    for got, want in zip(rows, batches, strict=True):
        assert got.split is split and torch.equal(got.index, want.index)
        gathered = got.gather()
        assert torch.equal(gathered.inputs["video"], want.inputs["video"])
        assert torch.equal(gathered.masks["video"], want.masks["video"])
        assert torch.equal(gathered.verb, want.verb)


@pytest.mark.parametrize("tensor", [
    torch.randn(9, 4, 8).to(torch.bfloat16),  # rows of 64 bytes: moved as 8 words
    torch.rand(9, 16) > 0.5,                  # bool rows of 16 bytes
    torch.rand(9, 3) > 0.5,                   # 3 bytes: element by element
    torch.randn(9, 5).half(),                 # 10 bytes: element by element
    torch.randn(9, 4, 8)[:, :, ::2],          # not contiguous
    torch.arange(9),                          # one axis
    torch.randn(0, 4, 8).to(torch.bfloat16),  # no rows
], ids=["bf16", "mask16", "mask3", "fp16x5", "strided", "labels", "empty"])
def test_gather_rows_is_indexing(tensor) -> None:
    from fusion.data import gather_rows

    index = torch.tensor([8, 0, 3, 3, 5]) if len(tensor) else torch.zeros(0, dtype=torch.long)
    got = gather_rows(tensor, index)
    assert got.dtype == tensor.dtype and got.shape == tensor[index].shape
    assert torch.equal(got, tensor[index])
    assert gather_rows(tensor, index[:0]).shape == tensor[index[:0]].shape
