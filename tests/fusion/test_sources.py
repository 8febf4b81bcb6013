"""Information sources: a questions-only run (`--video none`) beside video alone and both.

The runs train on the tiny stores of `tests/fusion/test_train.py` (`make_dataset`): the video
carries a verb signal, the noun question a noun signal.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from features.annotations import load_split as load_annotations
from features.store import store_path
from fusion.data import StreamedSplit, features_used, load_split
from fusion.heads import build_head
from fusion.predictions import load_predictions
from fusion.train import TrainConfig, run_dir, train
from tests.cli import one_error_line
from tests.fusion.test_train import _write_store, config_for, make_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sources") / "demo")


def _questions_only(data: Path, tmp_path: Path, **overrides) -> TrainConfig:
    return config_for(data, tmp_path, video="none", epochs=3, **overrides)


def _rewrite_video(data: Path, seed: int) -> None:
    """Replace both splits' video tokens with other values (same ids, same shapes)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "validation"):
        ids = load_annotations(data / "annotations", split).segments["narration_id"]
        path = store_path(data / "features", data.name, split, "video", "demo")
        shutil.rmtree(path)
        tokens = rng.normal(size=(len(ids), 4, 16)) * 5
        _write_store(path, ids.astype(str).tolist(), {"tokens": tokens.astype(np.float16)},
                     "video")


def test_features_used_names_what_the_head_sees() -> None:
    assert features_used(TrainConfig()) == "video+questions"
    assert features_used(TrainConfig(questions="none")) == "video"
    assert features_used(TrainConfig(video="none")) == "questions"
    assert run_dir(TrainConfig(video="none")).name == "mamba-demo-recognition-questions-s0"
    assert run_dir(TrainConfig(questions="none")).name == "mamba-demo-recognition-video-s0"
    assert run_dir(TrainConfig()).name == "mamba-demo-recognition-s0"


def test_questions_only_run_is_tagged_and_never_reads_the_video(dataset: Path,
                                                               tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = _questions_only(dataset, tmp_path)
    result = train(config)
    assert Path(result["folder"]).name == "mamba-demo-recognition-questions-s0"
    run = MlflowClient(config.tracking_uri).get_run(result["run_id"])
    assert run.data.tags["features"] == "questions"
    assert not [t for t in run.data.tags if t.startswith("manifest.video")]
    assert {"manifest.text.train", "manifest.text.validation"} <= set(run.data.tags)
    model = torch.load(Path(result["folder"]) / "last.pt", weights_only=True)["model"]
    assert not [k for k in model if "video" in k]  # no video branch was built
    # the noun question carries the noun: the questions alone beat the majority noun
    nouns = load_annotations(dataset / "annotations", "validation").segments["noun_class"]
    assert result["best"]["noun_top1"] > nouns.value_counts(normalize=True).max()

    other = tmp_path / "other" / "demo"
    shutil.copytree(dataset, other)
    _rewrite_video(other, seed=7)
    again = train(dataclasses.replace(_questions_only(other, tmp_path / "other"), track=False))
    first = load_predictions(Path(result["folder"]) / "predictions_best.npz")
    second = load_predictions(Path(again["folder"]) / "predictions_best.npz")
    assert np.array_equal(first.narration_id, second.narration_id)
    assert np.array_equal(first.verb_scores, second.verb_scores)  # other video, same verbs
    assert np.array_equal(first.noun_scores, second.noun_scores)


def test_questions_only_split_streams_like_it_loads(dataset: Path, tmp_path: Path) -> None:
    device = torch.device("cpu")
    loaded, _, _ = load_split(_questions_only(dataset, tmp_path, stream="never"), "train",
                              device)
    streamed, _, _ = load_split(_questions_only(dataset, tmp_path, stream="always"), "train",
                                device)
    assert isinstance(streamed, StreamedSplit)
    assert set(loaded.inputs) == set(streamed.shapes) == {"verb_question", "noun_question"}
    streamed.window_rows = 16  # several windows of the text store's shards
    ordered = torch.cat([b.inputs["noun_question"] for b in streamed.batches(5)])
    assert torch.equal(ordered, loaded.inputs["noun_question"])


@pytest.mark.parametrize("name, options", [
    ("mamba", {}),
    ("mamba", {"route_questions": True, "block": "bare", "video_proj": "none",
               "text_proj": "relu3", "proj_kernel": 0, "pool_padding": True,
               "init": "authors"}),  # the authors' structure: routing without video
    ("mlp", {}),
    ("transformer_6x4", {}),
])
def test_heads_take_the_questions_alone(name: str, options: dict) -> None:
    dims = {"verb_question": 8, "noun_question": 8}
    head = build_head(name, modality_dims=dims, num_verbs=5, num_nouns=6, **options)
    inputs = {m: torch.randn(3, 6, 8) for m in dims}
    masks = {m: torch.arange(6) < torch.tensor([[2], [6], [4]]) for m in dims}
    out = head(inputs, masks)
    assert out["verb"].shape == (3, 5) and out["noun"].shape == (3, 6)
    assert not [k for k, _ in head.named_parameters() if "video" in k]


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion.train", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_no_source_at_all_is_one_error_line(tmp_path: Path) -> None:
    line = one_error_line(_train_cli("--video", "none", "--questions", "none", "--out",
                                     str(tmp_path / "runs"), "--no-track", "--device", "cpu"))
    assert "--video none" in line and "--questions none" in line
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_questions_only_with_video_mixup_is_one_error_line(tmp_path: Path) -> None:
    line = one_error_line(_train_cli("--video", "none", "--mixup-alpha", "0.8", "--out",
                                     str(tmp_path / "runs"), "--no-track", "--device", "cpu"))
    assert "--mixup-alpha 0" in line
    assert not (tmp_path / "runs").exists()
