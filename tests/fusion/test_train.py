"""fusion.train on real feature stores and a real MLflow store: records, resume, early stop.

The dataset is the synthetic generator's annotations (no videos rendered) with random store
features that carry a class signal, so a few CPU epochs learn something.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from extract.synthetic import SyntheticConfig, plan_segments, plan_videos, write_annotations
from features.annotations import load_split
from features.errors import HarnessError
from features.store import AlignmentError, ArraySpec, StoreError, open_writer, store_path
from fusion.data import load_features, text_store_name, video_store_name
from fusion.metrics import metrics_for
from fusion.predictions import read_source
from fusion.train import TrainConfig, build_training, load_checkpoint, predict, run_dir, train
from tests.cli import one_error_line

TEXT_STORE = "tiny-roberta-template-paper"
ROOT = Path(__file__).resolve().parents[2]


def _write_store(path: Path, ids: list[str], arrays: dict[str, np.ndarray], kind: str,
                 task: str = "recognition") -> None:
    """A complete store; a video store records its clips' `task` as extraction does."""
    specs = {k: ArraySpec(v.shape[1:], str(v.dtype)) for k, v in arrays.items()}
    manifest = {"extractor": "test", "kind": kind,
                **({"clip": {"task": task}} if kind == "video" else {})}
    writer = open_writer(path, ids, specs, manifest, kind, shard_rows=16)
    for shard in writer.pending_shards():
        start, stop = writer.shard_range(shard)
        writer.write_shard(shard, {k: v[start:stop] for k, v in arrays.items()})


def make_dataset(root: Path, order_seed: int | None = None, task: str = "recognition") -> Path:
    """Annotations + video/text stores for train and validation under `root`; the video
    stores hold `task`'s clips (what `fusion.data.check_task` reads)."""
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
                     {"tokens": video.astype(np.float16)}, "video", task)
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


def assert_epoch_times(history: list[dict]) -> None:
    """Each epoch records its seconds and the part of them spent validating."""
    for record in history:
        assert 0 <= record["val_seconds"] <= record["epoch_seconds"], record


def test_predict_returns_each_batchs_scores_in_order(dataset: Path, tmp_path: Path) -> None:
    config = config_for(dataset, tmp_path)
    train_split, val_split, info = load_features(config, torch.device("cpu"))
    model, _, _ = build_training(config, train_split.dims, info, 1, torch.device("cpu"))
    scores = predict(model, val_split, 5, amp=False)  # batches of 10: the last one partial
    assert len(val_split) % 10 and list(scores) == ["verb", "noun"]
    with torch.no_grad():
        outputs = [model(b.inputs, b.masks) for b in val_split.batches(10)]
    for head, count in (("verb", 5), ("noun", 6)):
        expected = torch.cat([out[head] for out in outputs]).numpy()
        assert isinstance(scores[head], np.ndarray) and scores[head].dtype == np.float32
        assert scores[head].shape == (len(val_split), count)
        np.testing.assert_array_equal(scores[head], expected)
    # training validates on the device: the same scores as tensors, and the same metrics
    kept = predict(model, val_split, 5, amp=False, on_device=True)
    for head in scores:
        assert isinstance(kept[head], torch.Tensor) and kept[head].dtype == torch.float32
        np.testing.assert_array_equal(kept[head].numpy(), scores[head])
    labels = (val_split.verb.numpy(), val_split.noun.numpy())
    assert (metrics_for("recognition", kept["verb"], kept["noun"], *labels)
            == metrics_for("recognition", scores["verb"], scores["noun"], *labels))


def test_train_leaves_a_complete_mlflow_record(dataset: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = config_for(dataset, tmp_path, run_name="record")
    result = train(config)
    client = MlflowClient(config.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    history = torch.load(Path(result["folder"]) / "last.pt", weights_only=True)["state"]["history"]
    assert len(history) == 4
    assert_epoch_times(history)
    csv = pd.read_csv(Path(result["folder"]) / "history.csv")
    assert {"epoch_seconds", "val_seconds"} <= set(csv.columns)
    assert_epoch_times(csv.to_dict("records"))
    tags = run.data.tags
    assert (tags["fusion"], tags["backbone"], tags["task"], tags["features"], tags["dataset"]) == (
        "mamba", "demo", "recognition", "video+questions", "synthetic-demo")
    assert {"manifest.video.train", "manifest.text.validation"} <= set(tags)
    assert tags["excluded.video.train"] == tags["excluded.text.validation"] == "0"
    assert run.data.params["head.d_model"] == "16" and run.data.params["epochs"] == "4"
    curve = client.get_metric_history(run.info.run_id, "action_top1")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    assert run.data.metrics["best_action_top1"] == max(m.value for m in curve)
    assert run.data.metrics["params"] > 0 and run.data.metrics["flops"] > 0
    assert run.data.metrics["val_clips"] == len(load_split(dataset / "annotations",
                                                           "validation").segments)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions_best.npz", "config.json", "fingerprint.json", "best.pt", "history.csv",
            "per_class_accuracy.csv", "training_curves.png", "verb_confusion.png",
            "noun_confusion.png"} <= artifacts
    # the signal in the features is learnable: better than the majority verb
    labels = load_split(dataset / "annotations", "validation").segments["verb_class"]
    assert run.data.metrics["best_verb_top1"] > labels.value_counts(normalize=True).max()
    saved = json.loads((Path(result["folder"]) / "config.json").read_text())
    assert saved["head"]["d_model"] == 16
    # the best epoch's validation scores say where they came from (held out, but selected on)
    source = read_source(Path(result["folder"]) / "predictions_best.npz")
    assert source == {"run": str(result["folder"]), "checkpoint": "best",
                      "split": "validation", "trained_on": "train", "in_sample": False,
                      "selected_on": "validation"}


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
            "--label-smoothing", "0", "--device", config.device, "--out", str(config.out),
            "--tracking-uri", config.tracking_uri, "--head.d-model", "16", "--head.d-state",
            "4", "--run-name", config.run_name, *([] if config.track else ["--no-track"])]


def run_train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion.train", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_killed_run_resumes_to_the_uninterrupted_result(dataset: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    whole = train(config_for(dataset, tmp_path, run_name="whole"))
    config = config_for(dataset, tmp_path, run_name="killed")
    env = {**os.environ, "TORCH_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_2, *_cli_args(config)],
                            capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = torch.load(config.out / "killed" / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 2
    client = MlflowClient(config.tracking_uri)
    assert client.get_run(last["state"]["run_id"]).info.status == "RUNNING"

    capsys.readouterr()
    resumed = train(config)  # the same command again: the dead process's lock is gone
    err = capsys.readouterr().err  # the header says so, then epochs 3 and 4 only
    assert f"  run       {config.out / 'killed'} (resuming after epoch 2)" in err
    assert [line.split("  ")[0] for line in err.splitlines() if line.startswith("epoch ")] == [
        "epoch 3/4", "epoch 4/4"]
    assert resumed["run_id"] == last["state"]["run_id"]  # the same MLflow run, reopened
    assert client.get_run(resumed["run_id"]).info.status == "FINISHED"
    a = torch.load(config.out / "whole" / "last.pt", weights_only=True)
    b = torch.load(config.out / "killed" / "last.pt", weights_only=True)
    torch.load(config.out / "killed" / "best.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert_epoch_times(a["state"]["history"])
    assert_epoch_times(b["state"]["history"])  # epochs 1-2 from the killed process, 3-4 resumed
    drop = {"epoch_seconds", "val_seconds"}
    assert ([{k: v for k, v in r.items() if k not in drop} for r in a["state"]["history"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in b["state"]["history"]])
    curve = MlflowClient(config.tracking_uri).get_metric_history(resumed["run_id"], "train_loss")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    assert whole["best"]["action_top1"] == resumed["best"]["action_top1"]


def test_video_only_and_early_stop(dataset: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    config = config_for(dataset, tmp_path, questions="none", fusion="mlp",
                        head=dataclasses.replace(TrainConfig().head, d_model=16),
                        start_lr=1e-12, peak_lr=1e-12, final_lr=1e-12, epochs=10, patience=2,
                        run_name="video-only")
    result = train(config)
    assert result["epochs_run"] == 3  # epoch 1 is best; two more without a gain
    err = capsys.readouterr().err
    assert "early stop: no action_top1 gain for 2 epochs" in err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("  lr 1.00e-12  " in line for line in epochs)  # not 0.0
    assert "  features  video demo\n" in err and re.search(r"@ 1 +lr", epochs[-1])
    run = MlflowClient(config.tracking_uri).get_run(result["run_id"])
    assert run.data.tags["features"] == "video"
    assert "manifest.text.train" not in run.data.tags


def test_missing_and_misaligned_stores_are_clear_errors(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "demo", order_seed=3)
    with pytest.raises(AlignmentError, match="not aligned"):
        load_features(config_for(data, tmp_path), torch.device("cpu"))
    with pytest.raises(StoreError, match="video-vitl.zarr.*make extract"):
        load_features(config_for(data, tmp_path, backbone="vitl"), torch.device("cpu"))


def test_train_cli_reports_a_missing_store_in_one_line(dataset: Path, tmp_path: Path) -> None:
    config = config_for(dataset, tmp_path, run_name="no-store", track=False)
    line = one_error_line(run_train_cli(*_cli_args(config), "--backbone", "vitl"))
    assert "video-vitl.zarr" in line and "make extract" in line


def test_anticipation_selects_by_class_mean_recall(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "demo", task="anticipation")
    config = config_for(dataset, tmp_path, task="anticipation", epochs=3, track=False,
                        video_store="demo", text_store=TEXT_STORE, run_name="anticipation")
    result = train(config)
    history = torch.load(Path(result["folder"]) / "last.pt", weights_only=True)["state"]
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


# --- runs that know their config ---------------------------------------------------------

def test_rerun_with_other_settings_is_refused_until_told_what_to_do(dataset: Path,
                                                                    tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = config_for(dataset, tmp_path, run_name="lr", epochs=2)
    first = train(config)
    folder = Path(first["folder"])
    saved = (folder / "config.json").read_text()

    line = one_error_line(run_train_cli(*_cli_args(config), "--peak-lr", "0.05"))
    assert "peak_lr 0.01 -> 0.05" in line
    assert all(flag in line for flag in ("--resume", "--run-name", "--restart"))
    assert (folder / "config.json").read_text() == saved  # never rewritten with unused settings
    with pytest.raises(HarnessError, match="exclude each other"):
        train(dataclasses.replace(config, resume=True, restart=True))

    fresh = train(dataclasses.replace(config, peak_lr=0.05, run_name="lr-new"))
    assert fresh["run_id"] != first["run_id"] and fresh["epochs_run"] == 2

    resumed = train(dataclasses.replace(config, peak_lr=0.05, epochs=3, resume=True))
    assert resumed["run_id"] == first["run_id"] and resumed["epochs_run"] == 3
    last = load_checkpoint(folder / "last.pt")
    assert len(last["state"]["history"]) == 3  # epochs 1-2 kept, one more trained
    groups = last["optimizer"]["param_groups"]
    assert {g["peak_lr"] for g in groups if g["name"].startswith("rest")} == {0.05}  # new LR
    record = json.loads((folder / "fingerprint.json").read_text())
    assert record["fields"]["peak_lr"] == 0.05
    assert record["changes"] == [{"after_epoch": 2, "changed": {"epochs": [2, 3],
                                                                "peak_lr": [0.01, 0.05]}}]
    assert json.loads((folder / "config.json").read_text())["peak_lr"] == 0.05
    run = MlflowClient(config.tracking_uri).get_run(first["run_id"])
    assert run.data.params["peak_lr"] == "0.01"  # MLflow params stay the run's own
    assert "peak_lr 0.01 -> 0.05" in run.data.tags["settings_changed.epoch2"]

    restarted = train(dataclasses.replace(config, peak_lr=0.2, epochs=1, restart=True))
    assert restarted["run_id"] != first["run_id"]
    assert len(load_checkpoint(folder / "last.pt")["state"]["history"]) == 1  # from scratch
    again = train(dataclasses.replace(config, peak_lr=0.2, epochs=1))  # same settings: resumes
    assert again["run_id"] == restarted["run_id"] and again["epochs_run"] == 1


HOLD_AFTER_EPOCH_1 = """
import sys, time
from pathlib import Path
from features.config import cli
from fusion.train import TrainConfig, train
go = Path(sys.argv[1])
def hold(epoch, metrics):
    while epoch == 1 and not go.exists():
        time.sleep(0.05)
train(cli(TrainConfig, {}, args=sys.argv[2:]), on_epoch=hold)
"""


def _wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300  # a generous bound for a busy machine, not a timing test
    while not condition():
        assert process.poll() is None, f"{what}: the process ended early"
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_two_trainings_on_one_folder_one_trains_the_other_names_the_holder(
        dataset: Path, tmp_path: Path) -> None:
    config = config_for(dataset, tmp_path, run_name="shared", epochs=2, track=False)
    go, lock = tmp_path / "go", config.out / "shared" / "run.lock"
    first = subprocess.Popen([sys.executable, "-c", HOLD_AFTER_EPOCH_1, str(go),
                              *_cli_args(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (config.out / "shared" / "last.pt").exists(), first, "first epoch")
        line = one_error_line(run_train_cli(*_cli_args(config)))
        assert f"pid {first.pid} on " in line and "in use" in line
        assert f"pid {first.pid} on " in lock.read_text()
    finally:
        go.touch()
        _, err = first.communicate()
    assert first.returncode == 0, err[-2000:]
    history = load_checkpoint(config.out / "shared" / "last.pt")["state"]["history"]
    assert [r["epoch"] for r in history] == [1, 2]  # trained once, by the first process
    assert lock.read_text() == ""  # released, holder cleared


TRAIN_ON_GO = """
import sys, time
from pathlib import Path
from features.config import cli
from fusion.train import TrainConfig, train
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
config = cli(TrainConfig, {}, args=sys.argv[3:])
ready.touch()
while not go.exists():
    time.sleep(0.01)
train(config)
"""


def test_two_trainings_at_once_on_a_fresh_tracking_database(dataset: Path,
                                                            tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    go = tmp_path / "go"
    configs = [config_for(dataset, tmp_path, run_name=f"db-{i}", epochs=1) for i in range(2)]
    assert not Path(configs[0].tracking_uri.removeprefix("sqlite:///")).exists()
    processes = [subprocess.Popen([sys.executable, "-c", TRAIN_ON_GO, str(tmp_path / f"ready{i}"),
                                   str(go), *_cli_args(c)], cwd=ROOT, stderr=subprocess.PIPE,
                                  text=True) for i, c in enumerate(configs)]
    try:
        for i, process in enumerate(processes):  # both imported and parsed: start together
            _wait_for((tmp_path / f"ready{i}").exists, process, f"process {i} ready")
    finally:
        go.touch()
    results = [p.communicate()[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [r[-2000:] for r in results]
    client = MlflowClient(configs[0].tracking_uri)
    experiment = client.get_experiment_by_name(configs[0].experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("db-0", "FINISHED"), ("db-1", "FINISHED")]


KILL_BEFORE_FIRST_CHECKPOINT = """
import os, signal, sys
import fusion.train
from features.config import cli
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
fusion.train.predict = die  # after the first epoch's steps, before its checkpoint
fusion.train.train(cli(fusion.train.TrainConfig, {}, args=sys.argv[1:]))
"""


def test_run_left_running_by_a_killed_process_is_marked_killed(dataset: Path,
                                                               tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = config_for(dataset, tmp_path, run_name="orphan", epochs=1)
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_FIRST_CHECKPOINT,
                             *_cli_args(config)], capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = config.out / "orphan"
    assert not (folder / "last.pt").exists()
    orphan = json.loads((folder / "run.json").read_text())["run_id"]
    client = MlflowClient(config.tracking_uri)
    assert client.get_run(orphan).info.status == "RUNNING"

    result = train(config)  # the folder's next use
    assert client.get_run(orphan).info.status == "KILLED"
    assert result["run_id"] != orphan
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_missing_gpu_is_one_line_before_any_work(dataset: Path, tmp_path: Path) -> None:
    config = config_for(dataset, tmp_path, run_name="gpu", device="cuda")
    line = one_error_line(run_train_cli(*_cli_args(config)))
    assert "--device cuda" in line and "no CUDA GPU" in line
    assert not config.out.exists()


def test_checkpoint_that_runs_code_is_refused_not_unpickled(dataset: Path,
                                                            tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    config = config_for(dataset, tmp_path, run_name="planted", track=False)
    (config.out / "planted").mkdir(parents=True)
    torch.save({"model": Payload()}, config.out / "planted" / "last.pt")
    line = one_error_line(run_train_cli(*_cli_args(config)))
    assert "last.pt" in line and "refused without unpickling" in line
    assert not marker.exists()


def test_shared_A_ablation_trains_in_its_own_folder(dataset: Path, tmp_path: Path) -> None:
    shared = config_for(dataset, tmp_path, epochs=1, track=False)
    unshared = dataclasses.replace(shared, head=dataclasses.replace(shared.head, shared_A=False))
    assert run_dir(unshared) != run_dir(shared)
    train(shared)
    result = train(unshared)
    a_log = load_checkpoint(Path(result["folder"]) / "best.pt")["model"]["A_log"]
    assert a_log.shape[:2] == (2, 1)  # (branch, layer): video and questions
    assert not torch.equal(a_log[0], a_log[1])  # same start, each branch learned its own


class _Stop(Exception):
    """Raised from the epoch callback to interrupt a run after its checkpoint."""


@pytest.mark.gpu
def test_interrupted_cuda_run_resumes_from_its_weights_only_checkpoint(
        dataset: Path, tmp_path: Path) -> None:
    """On CUDA (CUDA graphs, CUDA RNG state), last.pt loads weights_only and resumes on track."""
    whole = train(config_for(dataset, tmp_path, run_name="whole", device="cuda", track=False))
    config = config_for(dataset, tmp_path, run_name="cut", device="cuda", track=False)

    def stop(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(config, on_epoch=stop)
    assert load_checkpoint(config.out / "cut" / "last.pt")["state"]["epoch"] == 2
    resumed = train(config)
    assert resumed["epochs_run"] == 4
    a = load_checkpoint(config.out / "whole" / "last.pt")["model"]
    b = load_checkpoint(config.out / "cut" / "last.pt")["model"]
    for key, value in a.items():
        assert torch.allclose(value, b[key], rtol=1e-3, atol=1e-4), key
    assert abs(whole["best"]["action_top1"] - resumed["best"]["action_top1"]) < 0.05


@pytest.mark.parametrize("max_norm", [1.0, 1e6])  # clipping active / never needed
def test_clipping_inside_fused_adamw_equals_clip_grad_norm(max_norm: float) -> None:
    """`apply_gradients` hands the clipping factor to fused AdamW (the CUDA path) instead of
    scaling every gradient: the parameters must follow `clip_grad_norm_` + AdamW's."""
    from fusion.train import apply_gradients

    torch.manual_seed(0)
    fused = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    plain = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    plain.load_state_dict(fused.state_dict())
    opt_fused = torch.optim.AdamW(fused.parameters(), lr=1e-2, fused=True)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-2, foreach=False)
    config = TrainConfig(grad_clip=max_norm)
    for _ in range(4):
        x = torch.randn(32, 8) * 10
        for model, opt in ((fused, opt_fused), (plain, opt_plain)):
            opt.zero_grad()
            apply_gradients(model, (model(x) ** 2).sum(), opt, config)
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert opt_fused.grad_scale.item() > 1.0 if max_norm == 1.0 else opt_fused.grad_scale == 1.0


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_runs_take_the_compiled_loss_and_it_is_the_eager_loss(monkeypatch) -> None:
    """`--compile` runs compute the verb + noun loss with `compiled_label_loss`, whose values
    and gradients are `label_loss`'s (float32 logits, with and without smoothing)."""
    from fusion import train as train_module
    from fusion.data import Batch

    calls = []
    compiled = train_module.compiled_label_loss()
    monkeypatch.setattr(train_module, "compiled_label_loss",
                        lambda: lambda *a: calls.append(1) or compiled(*a))
    g = torch.Generator().manual_seed(0)
    verb, noun = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 7, (6,), generator=g)
    for smoothing in (0.0, 0.1):
        logits = {"verb": torch.randn(6, 5, generator=g),
                  "noun": torch.randn(6, 7, generator=g).to(torch.bfloat16)}
        results = []
        for compile_ in (False, True):
            leaves = {k: v.clone().requires_grad_() for k, v in logits.items()}
            config = TrainConfig(compile=compile_, label_smoothing=smoothing)
            batch = Batch(torch.arange(6), {}, {}, verb, noun)
            loss = train_module.step_loss(lambda inputs, masks, leaves=leaves: leaves, batch,
                                          config, amp=False)
            loss.backward()
            results.append([loss.detach(), leaves["verb"].grad, leaves["noun"].grad])
        for got, want in zip(results[1], results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert results[0][0] > 0
    assert len(calls) == 2
