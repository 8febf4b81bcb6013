"""fusion.tracking: what a run records in a real MLflow sqlite store.

Params say the values used (no `None`/`auto`), artifacts land beside the database whatever
the working folder, tags say what the features really are (from the stores' manifests),
and the per-run plots and per-class table carry class names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from features.annotations import load_classes
from features.store import ArraySpec, FeatureStore, open_writer, store_path
from fusion import tracking
from fusion.train import TrainConfig, train
from tests.fusion.test_train import config_for, make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tracking") / "demo")


@pytest.fixture(scope="module")
def recorded(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real two-epoch run with `--device auto`, started from a folder that is neither
    the database's nor the repository's."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    config = dataclasses.replace(config_for(dataset, root, run_name="record", epochs=2),
                                 device="auto",
                                 tracking_uri=f"sqlite:///{root / 'db' / 'mlruns.db'}")
    (root / "db").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        result = train(config)
    client = MlflowClient(config.tracking_uri)
    return {"root": root, "elsewhere": elsewhere, "config": config, "result": result,
            "client": client, "run": client.get_run(result["run_id"])}


def test_params_are_the_values_used(recorded: dict[str, Any]) -> None:
    params = recorded["run"].data.params
    unresolved = {k: v for k, v in params.items() if v in ("None", "auto")}
    assert not unresolved, f"params without the value used: {unresolved}"
    assert params["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert params["early_stop_metric"] == "action_top1"
    assert params["tracking_uri"] == recorded["config"].tracking_uri
    assert params["head.d_state"] == "4"  # set by the test's config
    assert params["head.expand"] == "2" and params["head.depth"] == "1"  # the head's own
    assert params["head.backend"] == ("torch" if not torch.cuda.is_available()
                                      else params["head.backend"])
    assert params["video_store"] == "demo" and params["run_name"] == "record"
    tags = recorded["run"].data.tags  # from the manifests of the stores the run loaded
    # (the test's stores name no dataset or model: what matters is that both were read)
    assert not tags["features.weights"].startswith("unknown (no video store manifest")
    assert tags["features.text_weights"] != "unknown (no text store manifest)"


def test_head_params_of_a_fixed_size_transformer() -> None:
    from fusion.heads import build_head

    config = TrainConfig(fusion="transformer_6x4")
    model = build_head("transformer_6x4", modality_dims={"video": 16, "verb_question": 8},
                       num_verbs=3, num_nouns=4)
    params = tracking.head_params(config, model)
    assert params["depth"] == 6 and params["d_model"] == model.verb_head.in_features == 32
    assert params["d_state"] == tracking.NOT_APPLICABLE  # the Transformer has no SSM state


def test_artifacts_beside_the_database(recorded: dict[str, Any]) -> None:
    """MLflow's default would be `./mlruns` of the folder the command ran in."""
    run, root = recorded["run"], recorded["root"]
    experiment = recorded["client"].get_experiment(run.info.experiment_id)
    assert Path(experiment.artifact_location.removeprefix("file://")) == (
        root / "db" / "mlartifacts").resolve()
    files = {p.name for p in (root / "db" / "mlartifacts").rglob("*") if p.is_file()}
    assert {"verb_confusion.png", "noun_confusion.png", "per_class_accuracy.csv"} <= files
    assert not (recorded["elsewhere"] / "mlruns").exists()


def test_an_existing_experiment_keeps_its_artifact_location(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    old = tracking.connect(uri, "first")
    client = MlflowClient(uri)
    mine = client.create_experiment("mine", artifact_location=str(tmp_path / "own"))
    assert tracking.connect(uri, "mine") == mine
    assert client.get_experiment(mine).artifact_location.endswith("/own")
    assert client.get_experiment(old).artifact_location.endswith("/mlartifacts")
    assert tracking.artifact_location("postgresql://u@h/db") is None


def test_per_class_accuracy_and_confusions_name_the_classes(recorded: dict[str, Any],
                                                            dataset: Path) -> None:
    folder = Path(recorded["result"]["folder"])
    table = pd.read_csv(folder / "per_class_accuracy.csv")
    verbs = load_classes(dataset / "annotations" / "EPIC_100_verb_classes.csv").keys
    rows = table[table["head"] == "verb"]
    assert rows["class_name"].tolist() == [verbs[i] for i in rows["class_id"]]
    assert table["top1_percent"].between(0, 100).all()
    artifacts = {a.path for a in recorded["client"].list_artifacts(recorded["run"].info.run_id)}
    assert {"verb_confusion.png", "noun_confusion.png", "training_curves.png"} <= artifacts


def test_confusion_shows_the_most_frequent_classes_and_the_rest() -> None:
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.repeat(np.arange(30), np.arange(30, 0, -1)), [-1]])
    predicted = np.where(rng.random(len(labels)) < 0.5, np.maximum(labels, 0),
                         rng.integers(0, 30, len(labels)))
    matrix, shown = tracking.confusion(labels, predicted, 30, top=20)
    assert shown.tolist() == list(range(20))  # class i has 30 - i clips
    assert matrix.shape == (20, 21)  # the last column: predicted as a class not shown
    np.testing.assert_allclose(matrix.sum(1), 100.0)
    true0 = predicted[labels == 0]
    assert matrix[0, 0] == pytest.approx(100.0 * np.mean(true0 == 0))
    assert matrix[0, 20] == pytest.approx(100.0 * np.mean(true0 >= 20))
    small, ids = tracking.confusion(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3)
    assert ids.tolist() == [0, 1, 2] and small.shape == (3, 3)


# --- what the features really are --------------------------------------------------------

def _video_store(data: Path, name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """A one-row video store `name` of the train split with `manifest`; the manifest read
    back (what `fusion.data.load_features` hands tracking)."""
    path = store_path(data / "features", data.name, "train", "video", name)
    writer = open_writer(path, ["a"], {"tokens": ArraySpec((2, 4))}, manifest, "video", 1)
    writer.write_shard(0, {"tokens": np.zeros((1, 2, 4), np.float16)})
    return FeatureStore(path).manifest


MANIFESTS = {
    "avion": ({"extractor": "python -m extract video", "dataset": "ek100",
               "backbone": {"name": "vitl"}, "weights": "checkpoint",
               "sources": {"checkpoint": "/ckpt/avion_vitl.pt"},
               "checkpoint_sha256": "ab12cd34ef56" + "0" * 52,
               "preprocess": {"name": "avion", "timeline": "avion-30fps", "resize": "fused"}},
              "checkpoint", "avion:/ckpt/avion_vitl.pt sha256:ab12cd34ef56"),
    "random": ({"extractor": "python -m extract video", "dataset": "ek100",
                "backbone": {"name": "vitl"}, "weights": "random-init"},
               "random-init", "random-init"),
    "imported": ({"extractor": "python -m features.import", "dataset": "ek100",
                  "backbone": {"name": "vitl"}, "source_format": "hdf5",
                  "sources": {"source": "/dumps/orvit.h5"}},
                 "imported", "imported:hdf5:/dumps/orvit.h5"),
}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_feature_tags_come_from_the_store_manifest(tmp_path: Path, kind: str) -> None:
    """A vitl store on EK100 is tagged AVION only when its manifest names AVION's weights."""
    manifest, weights, detail = MANIFESTS[kind]
    data = tmp_path / "ek100"
    stored = _video_store(data, "vitl", manifest)
    config = TrainConfig(data=data, backbone="vitl", questions="none")
    tags = tracking.feature_tags(config, {"train_manifests": {"video": stored}})
    assert (tags["backbone_weights"], tags["features.weights"]) == (weights, detail)
    assert tags["features.backbone"] == "vitl" and tags["features.dataset"] == "ek100"
    assert "features.text_weights" not in tags


def test_feature_tags_without_a_store_say_so(tmp_path: Path) -> None:
    config = TrainConfig(data=tmp_path / "none", backbone="vitl")
    tags = tracking.feature_tags(config, {"train_manifests": {}})  # random tensors, no store
    assert tags["backbone_weights"] == "unknown"
    assert tags["features.weights"].startswith("unknown")
    questions = tracking.feature_tags(dataclasses.replace(config, video="none"), {})
    assert questions["features.weights"] == "none (no video)"
    assert "features.zero_rows" not in tags
    zeros = tracking.feature_tags(config, {"zero_rows": {"video.train": 3,
                                                         "video.validation": None}})
    assert zeros["features.zero_rows"] == "video.train=3"  # streamed splits are not read
