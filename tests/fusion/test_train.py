"""fusion.train on real feature stores and a real MLflow store: records, resume, early stop.

The dataset is the synthetic generator's annotations (no videos rendered) with random store
features that carry a class signal, so a few CPU epochs learn something.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.synthetic import SyntheticConfig, plan_segments, plan_videos, write_annotations
from features.annotations import load_split
from features.store import AlignmentError, ArraySpec, open_writer, store_path
from fusion.data import load_features, text_store_name, video_store_name
from fusion.train import TrainConfig, train

TEXT_STORE = "tiny-roberta-template-paper"


def _write_store(path: Path, ids: list[str], arrays: dict[str, np.ndarray], kind: str) -> None:
    specs = {k: ArraySpec(v.shape[1:], str(v.dtype)) for k, v in arrays.items()}
    writer = open_writer(path, ids, specs, {"extractor": "test", "kind": kind}, kind,
                         shard_rows=16)
    for shard in writer.pending_shards():
        start, stop = writer.shard_range(shard)
        writer.write_shard(shard, {k: v[start:stop] for k, v in arrays.items()})


def make_dataset(root: Path, order_seed: int | None = None) -> Path:
    """Annotations + video/text stores for train and validation under `root`."""
    config = SyntheticConfig(out=root, videos=6, segments_per_video=16, num_verbs=5,
                             num_nouns=6, workers=1)
    videos = plan_videos(config)
    segments, lengths = plan_segments(config, videos, np.random.default_rng(0))
    write_annotations(config, videos, segments, lengths)
    rng = np.random.default_rng(1)
    verb_code, noun_code = 3 * rng.normal(size=(5, 16)), 3 * rng.normal(size=(6, 8))
    for split in ("train", "validation"):
        frame = load_split(root / "annotations", split).segments
        ids = frame["narration_id"].astype(str).tolist()
        n = len(ids)
        verb, noun = frame["verb_class"].to_numpy(), frame["noun_class"].to_numpy()
        video = rng.normal(size=(n, 4, 16)) + verb_code[verb][:, None]
        noun_tokens = rng.normal(size=(n, 6, 8)) + noun_code[noun][:, None]
        lengths_ = rng.integers(2, 7, size=n)
        mask = np.arange(6) < lengths_[:, None]
        text_ids = ids if order_seed is None else list(np.random.default_rng(order_seed)
                                                       .permutation(ids))
        _write_store(store_path(root / "features", root.name, split, "video", "demo"), ids,
                     {"tokens": video.astype(np.float16)}, "video")
        _write_store(store_path(root / "features", root.name, split, "text", TEXT_STORE),
                     text_ids,
                     {"verb_tokens": rng.normal(size=(n, 6, 8)).astype(np.float16),
                      "verb_mask": mask, "noun_tokens": noun_tokens.astype(np.float16),
                      "noun_mask": mask}, "text")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train") / "demo")


def config_for(data: Path, tmp_path: Path, **overrides) -> TrainConfig:
    base = TrainConfig(data=data, epochs=4, batch_size=8, peak_lr=1e-2, ssm_peak_lr=1e-2,
                       warmup_epochs=1, label_smoothing=0.0, device="cpu", out=tmp_path / "runs",
                       tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
                       head=dataclasses.replace(TrainConfig().head, d_model=16, d_state=4))
    return dataclasses.replace(base, **overrides)


def test_store_names_follow_extract() -> None:
    config = TrainConfig(backbone="vitl", text_model="roberta-base")
    assert (video_store_name(config), text_store_name(config)) == (
        "vitl", "roberta-base-template-paper")
    anticipation = dataclasses.replace(config, task="anticipation", question_mask="strict")
    assert (video_store_name(anticipation), text_store_name(anticipation)) == (
        "vitl-anticipation", "roberta-base-predictions-strict")


def test_load_features_aligns_labels_and_masks(dataset: Path, tmp_path: Path) -> None:
    train_split, val_split, info = load_features(config_for(dataset, tmp_path),
                                                 torch.device("cpu"))
    labels = load_split(dataset / "annotations", "validation").segments
    assert val_split.narration_ids == labels["narration_id"].astype(str).tolist()
    assert val_split.verb.tolist() == labels["verb_class"].tolist()
    assert set(train_split.inputs) == {"video", "verb_question", "noun_question"}
    assert train_split.masks["noun_question"].dtype == torch.bool
    assert (info["num_verbs"], info["num_nouns"], info["dataset"]) == (5, 6, "synthetic-demo")
    assert info["profile_shapes"]["video"] == (4, 16)
    assert len(info["metric_extra"]["participant_ids"]) == len(val_split)
    assert len(info["metric_extra"]["unseen_participants"]) > 0


def test_train_leaves_a_complete_mlflow_record(dataset: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = config_for(dataset, tmp_path, run_name="record")
    result = train(config)
    client = MlflowClient(config.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["fusion"], tags["backbone"], tags["task"], tags["features"], tags["dataset"]) == (
        "mamba", "demo", "recognition", "video+questions", "synthetic-demo")
    assert {"manifest.video.train", "manifest.text.validation"} <= set(tags)
    assert run.data.params["head.d_model"] == "16" and run.data.params["epochs"] == "4"
    curve = client.get_metric_history(run.info.run_id, "action_top1")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    assert run.data.metrics["best_action_top1"] == max(m.value for m in curve)
    assert run.data.metrics["params"] > 0 and run.data.metrics["flops"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions_best.npz", "config.json", "best.pt", "history.csv",
            "per_class_accuracy.csv", "training_curves.png", "verb_confusion.png"} <= artifacts
    # the signal in the features is learnable: better than the majority verb
    labels = load_split(dataset / "annotations", "validation").segments["verb_class"]
    assert run.data.metrics["best_verb_top1"] > labels.value_counts(normalize=True).max()
    saved = json.loads((Path(result["folder"]) / "config.json").read_text())
    assert saved["head"]["d_model"] == 16


KILL_AFTER_EPOCH_2 = """
import os, signal, sys
import torch
from fusion.train import TrainConfig, train
from features.config import cli
torch.set_num_threads(int(os.environ["TORCH_THREADS"]))  # same float sums as the test process
config = cli(TrainConfig, {}, args=sys.argv[1:])
def die(epoch, metrics):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
train(config, on_epoch=die)
"""


def _cli_args(config: TrainConfig) -> list[str]:
    return ["--data", str(config.data), "--epochs", str(config.epochs), "--batch-size",
            str(config.batch_size), "--peak-lr", str(config.peak_lr), "--ssm-peak-lr",
            str(config.ssm_peak_lr), "--warmup-epochs", str(config.warmup_epochs),
            "--label-smoothing", "0", "--device", "cpu", "--out", str(config.out),
            "--tracking-uri", config.tracking_uri, "--head.d-model", "16", "--head.d-state",
            "4", "--run-name", config.run_name]


def test_killed_run_resumes_to_the_uninterrupted_result(dataset: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    whole = train(config_for(dataset, tmp_path, run_name="whole"))
    config = config_for(dataset, tmp_path, run_name="killed")
    env = {**os.environ, "TORCH_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_2, *_cli_args(config)],
                            capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = torch.load(config.out / "killed" / "last.pt", weights_only=False)
    assert last["state"]["epoch"] == 2

    resumed = train(config)  # the same command again
    assert resumed["run_id"] == last["state"]["run_id"]  # the same MLflow run, reopened
    a = torch.load(config.out / "whole" / "last.pt", weights_only=False)
    b = torch.load(config.out / "killed" / "last.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    drop = {"epoch_seconds"}
    assert ([{k: v for k, v in r.items() if k not in drop} for r in a["state"]["history"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in b["state"]["history"]])
    curve = MlflowClient(config.tracking_uri).get_metric_history(resumed["run_id"], "train_loss")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    assert whole["best"]["action_top1"] == resumed["best"]["action_top1"]


def test_video_only_and_early_stop(dataset: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = config_for(dataset, tmp_path, questions="none", fusion="mlp",
                        head=dataclasses.replace(TrainConfig().head, d_model=16),
                        start_lr=1e-12, peak_lr=1e-12, final_lr=1e-12, epochs=10, patience=2,
                        run_name="video-only")
    result = train(config)
    assert result["epochs_run"] == 3  # epoch 1 is best; two more without a gain
    run = MlflowClient(config.tracking_uri).get_run(result["run_id"])
    assert run.data.tags["features"] == "video"
    assert "manifest.text.train" not in run.data.tags


def test_missing_and_misaligned_stores_are_clear_errors(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "demo", order_seed=3)
    with pytest.raises(AlignmentError, match="not aligned"):
        load_features(config_for(data, tmp_path), torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="video-vitl.zarr.*make extract"):
        load_features(config_for(data, tmp_path, backbone="vitl"), torch.device("cpu"))


def test_anticipation_selects_by_class_mean_recall(dataset: Path, tmp_path: Path) -> None:
    config = config_for(dataset, tmp_path, task="anticipation", epochs=3, track=False,
                        video_store="demo", text_store=TEXT_STORE, run_name="anticipation")
    result = train(config)
    history = torch.load(Path(result["folder"]) / "last.pt", weights_only=False)["state"]
    recalls = [r["action_recall5"] for r in history["history"]]
    assert history["best_epoch"] == int(np.argmax(recalls))  # first best, as `>` keeps it
    assert (Path(result["folder"]) / "history.csv").exists()


def test_streamed_split_yields_every_row_once_in_full_batches(dataset: Path,
                                                              tmp_path: Path) -> None:
    from fusion.data import StreamedSplit, load_split

    device = torch.device("cpu")
    loaded, _, _ = load_split(config_for(dataset, tmp_path, stream="never"), "train", device)
    streamed, _, _ = load_split(config_for(dataset, tmp_path, stream="always"), "train", device)
    assert isinstance(streamed, StreamedSplit) and streamed.window_rows == 16 * 8
    streamed.window_rows = 16  # several windows on this small split
    assert streamed.shapes == loaded.shapes and len(streamed) == len(loaded)
    batches = list(streamed.batches(7, torch.Generator().manual_seed(0)))
    assert all(len(b.index) == 7 for b in batches[:-1])
    rows = {tuple(v.tolist()): label for b in batches
            for v, label in zip(b.inputs["video"][:, 0, :4], b.verb.tolist(), strict=True)}
    expected = {tuple(v.tolist()): label for v, label in zip(
        loaded.inputs["video"][:, 0, :4], loaded.verb.tolist(), strict=True)}
    assert rows == expected  # every clip once, with its own label
    ordered = torch.cat([b.inputs["noun_question"] for b in streamed.batches(5)])
    assert torch.equal(ordered, loaded.inputs["noun_question"])  # file order without a generator
    again = list(streamed.batches(7, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a.verb, b.verb) for a, b in zip(batches, again, strict=True))


def test_streamed_training_equals_loaded_training(dataset: Path, tmp_path: Path) -> None:
    loaded = train(config_for(dataset, tmp_path, stream="never", track=False, run_name="l"))
    streamed = train(config_for(dataset, tmp_path, stream="always", track=False, run_name="s"))
    # different batch order (window shuffle), same data: both learn the same task
    assert streamed["epochs_run"] == loaded["epochs_run"] == 4
    assert streamed["best"]["verb_top1"] > 0.5 and loaded["best"]["verb_top1"] > 0.5
