"""fusion.predict: a trained run's predictions for validation (equal to training's own) and
for an unlabelled test split (accepted by the submission exporter), and its refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extract.synthetic import SyntheticConfig, plan_segments, plan_videos, write_annotations
from features.annotations import load_segments
from features.store import ArraySpec, open_writer, store_path
from fusion.export import read_submission, validate_submission
from fusion.predict import PredictConfig, run_predict
from fusion.predictions import load_predictions, read_source
from fusion.train import train
from tests.cli import one_error_line
from tests.fusion.test_train import TEXT_STORE, config_for, make_dataset

ROOT = Path(__file__).resolve().parents[2]
TEST_FILE = "EPIC_100_test_timestamps.csv"


def write_test_split(root: Path, fail_row: int | None = None) -> list[str]:
    """A test-timestamps file (the synthetic generator's, with one test video) and random
    video/text stores for it shaped as `make_dataset`'s; `fail_row` fails extraction."""
    scratch = SyntheticConfig(out=root / "scratch", videos=6, segments_per_video=16,
                              num_verbs=5, num_nouns=6, workers=1, test_videos=1)
    videos = plan_videos(scratch)
    segments, lengths = plan_segments(scratch, videos, np.random.default_rng(0))
    shutil.copyfile(write_annotations(scratch, videos, segments, lengths) / TEST_FILE,
                    root / "annotations" / TEST_FILE)
    shutil.rmtree(root / "scratch")
    ids = load_segments(root / "annotations" / TEST_FILE)["narration_id"].astype(str).tolist()
    n, rng = len(ids), np.random.default_rng(2)
    mask = np.arange(6) < rng.integers(2, 7, size=n)[:, None]
    stores = {
        ("video", "demo"): {"tokens": rng.normal(size=(n, 4, 16)).astype(np.float16)},
        ("text", TEXT_STORE): {"verb_tokens": rng.normal(size=(n, 6, 8)).astype(np.float16),
                               "verb_mask": mask, "noun_mask": mask,
                               "noun_tokens": rng.normal(size=(n, 6, 8)).astype(np.float16)},
    }
    for (kind, name), arrays in stores.items():
        path = store_path(root / "features", root.name, "test", kind, name)
        shutil.rmtree(path, ignore_errors=True)
        specs = {k: ArraySpec(v.shape[1:], str(v.dtype)) for k, v in arrays.items()}
        manifest = {"extractor": "test", "kind": kind,  # as `make_dataset`'s stores
                    **({"clip": {"task": "recognition"}} if kind == "video" else {})}
        writer = open_writer(path, ids, specs, manifest, kind, shard_rows=16)
        for shard in writer.pending_shards():
            start, stop = writer.shard_range(shard)
            failed = [("video not found" if kind == "video" and i == fail_row else "")
                      for i in range(start, stop)]
            writer.write_shard(shard, {k: v[start:stop] for k, v in arrays.items()}, failed)
    return ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """(dataset, run folder, test ids): 2 epochs on `make_dataset`'s stores, plus a test split."""
    tmp = tmp_path_factory.mktemp("predict")
    dataset = make_dataset(tmp / "demo")
    test_ids = write_test_split(dataset)
    result = train(config_for(dataset, tmp, epochs=2, track=False, run_name="predict"))
    return dataset, Path(result["folder"]), test_ids


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_validation_reproduces_the_runs_own_predictions(trained, tmp_path: Path) -> None:
    _, folder, _ = trained
    path, count = run_predict(PredictConfig(run=folder, split="validation", device="cpu",
                                            out=tmp_path / "val.npz"))
    ours, runs = load_predictions(path), load_predictions(folder / "predictions_best.npz")
    assert count == len(runs) > 0
    assert ours.narration_id.tolist() == runs.narration_id.tolist()
    assert np.array_equal(ours.verb_scores, runs.verb_scores)
    assert np.array_equal(ours.noun_scores, runs.noun_scores)
    assert ours.action_scores is None and runs.action_scores is None


def test_predictions_record_whether_they_are_in_sample(trained, tmp_path: Path, capsys
                                                      ) -> None:
    """The run's own train split: `in_sample` true in the file and one note on stderr (the
    anticipation chain writes its train questions from such a file); validation: false and
    no note."""
    _, folder, _ = trained
    recorded = {}
    for split in ("train", "validation"):
        path, count = run_predict(PredictConfig(run=folder, split=split, device="cpu",
                                                out=tmp_path / f"{split}.npz"))
        assert count == len(load_predictions(path)) > 0
        recorded[split] = (read_source(path), capsys.readouterr().err)
    source, err = recorded["train"]
    assert source == {"run": str(folder), "checkpoint": "best", "split": "train",
                      "trained_on": "train", "in_sample": True}
    notes = [line for line in err.splitlines() if "in-sample" in line]
    assert len(notes) == 1 and str(folder) in notes[0] and "trained on the train split" in notes[0]
    source, err = recorded["validation"]
    assert source["in_sample"] is False and source["split"] == "validation"
    assert source["trained_on"] == "train" and "in-sample" not in err


def test_test_split_without_labels_exports_as_a_submission(trained, tmp_path: Path) -> None:
    dataset, folder, test_ids = trained
    done = cli("fusion.predict", "--run", str(folder), "--split", "test", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = folder / "predictions_test.npz"
    assert load_predictions(predictions).narration_id.tolist() == test_ids
    assert read_source(predictions)["in_sample"] is False and "in-sample" not in done.stderr
    annotations = dataset / "annotations" / TEST_FILE
    out = tmp_path / "submission.zip"
    done = cli("fusion.export", "--predictions", str(predictions), "--task", "recognition",
               "--format", "submission", "--annotations", str(annotations), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    validate_submission(read_submission(out), "recognition", expected_ids=test_ids,
                        n_verbs=5, n_nouns=6)


def test_failed_test_rows_are_refused_unless_excluded(trained, tmp_path: Path) -> None:
    dataset, folder, test_ids = trained
    copy = tmp_path / "demo"  # the store folder is named after the dataset: keep the name
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns("test"))
    write_test_split(copy, fail_row=3)
    args = ("fusion.predict", "--run", str(folder), "--split", "test", "--device", "cpu",
            "--data", str(copy), "--out", str(tmp_path / "p.npz"))
    line = one_error_line(cli(*args))
    assert "video-demo.zarr" in line and test_ids[3] in line and "--retry-failed" in line
    assert "--failed exclude" in line and not (tmp_path / "p.npz").exists()
    path, count = run_predict(PredictConfig(run=folder, split="test", device="cpu",
                                            data=copy, failed="exclude",
                                            out=tmp_path / "p.npz"))
    assert load_predictions(path).narration_id.tolist() == test_ids[:3] + test_ids[4:]


def test_one_line_errors(trained, tmp_path: Path) -> None:
    dataset, folder, _ = trained
    line = one_error_line(cli("fusion.predict", "--run", str(tmp_path / "nope")))
    assert "no such run folder" in line
    bare = tmp_path / "bare"  # a run folder whose training never finished an epoch
    bare.mkdir()
    for name in ("config.json", "fingerprint.json"):
        shutil.copyfile(folder / name, bare / name)
    line = one_error_line(cli("fusion.predict", "--run", str(bare), "--split", "validation",
                              "--device", "cpu"))
    assert "best.pt: not found" in line and "--checkpoint last" in line
    copy = tmp_path / "demo"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns("test"))
    line = one_error_line(cli("fusion.predict", "--run", str(folder), "--split", "test",
                              "--data", str(copy), "--device", "cpu"))
    assert "test/video-demo.zarr: no video feature store" in line and "make extract" in line


def test_failed_rows_score_the_train_prior(trained, tmp_path: Path) -> None:
    """`--failed prior`: every segment gets a row; a failed clip scores the train split's
    class frequencies (add-one), the others what the model predicts."""
    dataset, folder, test_ids = trained
    copy = tmp_path / "demo"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns("test"))
    write_test_split(copy, fail_row=3)
    common = dict(run=folder, split="test", device="cpu", data=copy)
    excluded = load_predictions(run_predict(PredictConfig(**common, failed="exclude",
                                                          out=tmp_path / "e.npz"))[0])
    path, count = run_predict(PredictConfig(**common, failed="prior", out=tmp_path / "p.npz"))
    prior = load_predictions(path)
    assert count == len(test_ids) and prior.narration_id.tolist() == test_ids
    keep = [i for i in range(len(test_ids)) if i != 3]
    np.testing.assert_array_equal(prior.verb_scores[keep], excluded.verb_scores)
    train = load_segments(copy / "annotations" / "EPIC_100_train.csv")
    for name, count_classes in (("verb", 5), ("noun", 6)):
        frequency = np.bincount(train[f"{name}_class"], minlength=count_classes) + 1.0
        np.testing.assert_allclose(getattr(prior, f"{name}_scores")[3],
                                   np.log(frequency / frequency.sum()), rtol=1e-6)


def _text_store(root: Path, name: str, ids: list[str], manifest: dict) -> None:
    rng = np.random.default_rng(3)
    arrays = {"verb_tokens": rng.normal(size=(len(ids), 6, 8)).astype(np.float16),
              "noun_tokens": rng.normal(size=(len(ids), 6, 8)).astype(np.float16),
              "verb_mask": np.ones((len(ids), 6), bool), "noun_mask": np.ones((len(ids), 6), bool)}
    specs = {k: ArraySpec(v.shape[1:], str(v.dtype)) for k, v in arrays.items()}
    writer = open_writer(store_path(root / "features", root.name, "test", "text", name), ids,
                         specs, manifest, "text", shard_rows=16)
    for shard in writer.pending_shards():
        start, stop = writer.shard_range(shard)
        writer.write_shard(shard, {k: v[start:stop] for k, v in arrays.items()})


def test_text_store_override_may_differ_in_generator_only(trained, tmp_path: Path) -> None:
    """`--text-store`: questions written from predictions (the unlabelled test split) are
    read; a store from another extractor is still refused."""
    dataset, folder, test_ids = trained
    _text_store(dataset, "from-predictions", test_ids,
                {"extractor": "test", "kind": "text", "generator": "recognized"})
    _text_store(dataset, "other-model", test_ids, {"extractor": "other", "kind": "text"})
    args = ("fusion.predict", "--run", str(folder), "--split", "test", "--device", "cpu")
    done = cli(*args, "--text-store", "from-predictions", "--out", str(tmp_path / "p.npz"))
    assert done.returncode == 0, done.stderr
    assert "text-from-predictions.zarr, not the run's store" in done.stderr
    assert "match its training store but for generator" in done.stderr
    assert load_predictions(tmp_path / "p.npz").narration_id.tolist() == test_ids
    line = one_error_line(cli(*args, "--text-store", "other-model", "--out",
                              str(tmp_path / "q.npz")))
    assert "differ from those the run trained on" in line and "extractor" in line
