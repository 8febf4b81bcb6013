"""The Makefile's EK100 chains: every path follows DATA/ANNOTATIONS/VIDEOS/CHECKPOINT/RUNS
(`make -n`), the store names it expects are the ones the stages write, and both chains run
through to challenge files our validator accepts on a small synthetic EK100 dataset, a rerun
doing nothing."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from features.annotations import load_segments
from features.store import store_path
from fusion.data import text_store_name, video_store_name
from fusion.export import N_ACTIONS, read_submission, validate_submission
from fusion.train import PRESETS, overlay, protocol_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str, env: dict[str, str] | None = None, check: bool = True
         ) -> subprocess.CompletedProcess:
    """`make ARGS` in the repository with this interpreter as PY (nothing is installed)."""
    result = subprocess.run(["make", "--no-print-directory", f"PY={sys.executable}", *args],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def commands(*args: str) -> list[list[str]]:
    """The python commands `make -n ARGS` would run (also inside shell loops), in words."""
    out = []
    for line in make("-n", *args).stdout.replace("\\\n", " ").splitlines():
        for part in line.split(sys.executable)[1:]:
            words = shlex.split(part.split("||")[0].split(";")[0].split(" > ")[0])
            out.append([sys.executable, *words])
    return out


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_paths_follow_data_annotations_videos_checkpoint() -> None:
    (video,) = {tuple(c) for c in commands("extract", "BACKBONE=vitl", "DATA=/scratch/ek100",
                                           "CHECKPOINT=/m/avion.pt", "SPLITS=validation")}
    assert flag(list(video), "--annotations") == "/scratch/ek100/annotations"
    assert flag(list(video), "--videos") == "/scratch/ek100/videos"
    assert flag(list(video), "--root") == "/scratch/ek100/features"
    assert flag(list(video), "--checkpoint") == "/m/avion.pt"
    (train,) = commands("train", "BACKBONE=vitl", "DATA=/x")
    assert flag(train, "--data") == "/x" and flag(train, "--preset") == "mambavl-vitl"
    (questions,) = commands("questions", "TASK=anticipation", "SPLIT=test", "DATA=/x",
                            "PREDICTIONS=p.npz", "ARGS=--mask-token [MASK]")
    assert flag(questions, "--predictions") == "p.npz" and questions[-1] == "[MASK]"
    assert flag(questions, "--annotations") == "/x/annotations/EPIC_100_test_timestamps.csv"
    (export,) = commands("submission", "SPLIT=test", "ANNOTATIONS=/a", "PREDICTIONS=p.npz",
                         "OUT=s.zip")
    assert flag(export, "--annotations") == "/a/EPIC_100_test_timestamps.csv"
    # the whole chain: every path it reads or writes is under DATA, RUNS or the checkpoint
    chain = commands("-B", "ek100-recognition", "ek100-anticipation", "BACKBONE=vitl",
                     "DATA=/x", "RUNS=/r", "CHECKPOINT=/m/avion.pt", "VIDEOS=/v")
    assert len(chain) > 20
    for words in chain:
        for word in words:
            if word.startswith("/") and word != sys.executable:
                assert word.startswith(("/x", "/r", "/v", "/m/avion.pt")), (word, words)
    assert all(flag(w, "--videos") == "/v" for w in chain if "video" in w[:4])


def test_venv_installs_nothing_when_py_is_given(tmp_path: Path) -> None:
    venv = f"VENV={tmp_path / 'venv'}"
    assert "pip install" not in make("-n", "venv", venv).stdout
    default = subprocess.run(["make", "-n", "venv", venv], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout  # PY unset: .venv is built
    assert "pip install" in default


@pytest.mark.parametrize(("protocol", "fusion"), [("clean", "mamba"), ("paper", "mamba"),
                                                  ("authors", "mamba"), ("authors", "mlp")])
def test_chain_names_the_stores_that_training_reads(protocol: str, fusion: str) -> None:
    """The text and video store files the chain waits for are those fusion.train opens (the
    authors' baselines read a pooler store, their Mamba head an embeddings store)."""
    listed = make("chain-files", "BACKBONE=vitl", "DATA=/x", "RUNS=/r",
                  f"PROTOCOL={protocol}", f"FUSION={fusion}").stdout
    preset = "mambavl-vitl" if fusion == "mamba" else f"{fusion}-vitl"
    for task in ("recognition", "anticipation"):
        config = overlay(protocol_config(protocol), PRESETS[preset])
        config.task = task
        name = text_store_name(config)
        video = "vitl" + ("-anticipation" if task == "anticipation" else "")
        for split in ("train", "validation"):
            assert f"/x/features/x/{split}/text-{name}.failures.json" in listed
            assert f"/x/features/x/{split}/video-{video}.failures.json" in listed


def test_orvit_chain_imports_each_split_from_its_dump() -> None:
    """BACKBONE=orvit: the video stage imports ORViT's dump of each split (`%` in SOURCE is the
    split) into the store fusion.train --preset mambavl-orvit reads, the test split included;
    `make extract` runs the same command."""
    chain = commands("-B", "ek100-recognition", "BACKBONE=orvit", "SOURCE=x_%.h5", "DATA=/x",
                     "RUNS=/r")
    imports = [w for w in chain if w[1:3] == ["-m", "features.import"]]
    assert [flag(w, "--split") for w in imports] == ["train", "validation", "test"]
    assert {flag(w, "--task") for w in imports} == {"recognition"}  # ORViT's dumps: actions
    config = PRESETS["mambavl-orvit"]
    listed = make("chain-files", "BACKBONE=orvit", "DATA=/x", "RUNS=/r").stdout
    for words in imports:
        split = flag(words, "--split")
        assert flag(words, "--source") == f"x_{split}.h5"
        assert flag(words, "--annotations") == "/x/annotations"
        name = flag(words, "--name") if "--name" in words else flag(words, "--backbone")
        path = store_path(flag(words, "--root"), flag(words, "--dataset"), split, "video", name)
        assert name == video_store_name(config) == "orvit"
        assert f"{path.with_suffix('')}.failures.json" in listed  # the stage's file
    assert not [w for w in chain if w[1:3] == ["-m", "extract"] and w[3] == "video"]
    (extract,) = commands("extract", "BACKBONE=orvit", "SOURCE=one.h5", "DATA=/x")
    assert flag(extract, "--source") == "one.h5" and flag(extract, "--split") == "$s"  # loop
    same = {"one.h5": "x_train.h5", "$s": "train"}
    assert [same.get(word, word) for word in extract] == imports[0]
    (extract,) = commands("extract", "BACKBONE=orvit", "SOURCE=one.h5", "DATA=/x",
                          "TASK=anticipation")
    assert flag(extract, "--task") == "anticipation"  # the clips' task is recorded as asked


def chain_data(tmp_path: Path) -> Path:
    """A DATA folder whose annotation files the chains' check finds (empty files)."""
    (tmp_path / "annotations").mkdir()
    for name in ("train", "validation", "test_timestamps", "verb_classes", "noun_classes"):
        (tmp_path / "annotations" / f"EPIC_100_{name}.csv").touch()
    return tmp_path


def test_orvit_chains_stop_at_once_with_what_to_pass(tmp_path: Path) -> None:
    data = f"DATA={chain_data(tmp_path)}"
    for goal in ("ek100-recognition", "extract"):
        result = make(goal, "BACKBONE=orvit", data, check=False)
        assert result.returncode != 0 and sys.executable not in result.stdout
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert "pass SOURCE=dump.h5" in line and "SOURCE=dumps/orvit_%.h5" in line
    # anticipation reads observed windows, which ORViT's dumps of the actions are not
    result = make("ek100-anticipation", "BACKBONE=orvit", "SOURCE=x.h5", data, check=False)
    assert result.returncode != 0 and sys.executable not in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    store = store_path(tmp_path / "features", tmp_path.name, "train", "video",
                       "orvit-anticipation")
    assert line.startswith(f"error: {store}: not found") and "observed window" in line
    assert "features.import --backbone orvit --name orvit-anticipation --task anticipation" in line
    assert f"--split train --root {tmp_path}/features --dataset {tmp_path.name}" in line


def test_embed_text_without_questions_says_which_make_questions_to_run(tmp_path: Path) -> None:
    result = make("embed-text", f"DATA={tmp_path}", "SPLITS=train", check=False)
    assert result.returncode != 0
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "train-template-paper.jsonl: not found" in line
    assert "make questions SPLIT=train" in line


def test_chain_needs_the_annotations(tmp_path: Path) -> None:
    result = make("ek100-recognition", f"DATA={tmp_path}", check=False)
    assert result.returncode != 0
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "EPIC_100_train.csv: not found" in line and "make annotations" in line


def test_both_chains_on_synthetic_ek100(tmp_path: Path) -> None:
    """Both chains from a fresh dataset to challenge files; a second run does nothing."""
    data, runs = tmp_path / "demo", tmp_path / "runs"
    subprocess.run([sys.executable, "-m", "extract.synthetic", "--out", str(data),
                    "--videos", "5", "--videos-per-participant", "2", "--val-videos", "1",
                    "--test-videos", "1", "--segments-per-video", "6", "--width", "160",
                    "--height", "120", "--num-verbs", "4", "--num-nouns", "5"],
                   check=True, capture_output=True, cwd=ROOT)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    args = ("BACKBONE=demo", f"DATA={data}", f"RUNS={runs}", "VIDEO_ARGS=--workers 0",
            "TRAIN_ARGS=--epochs 1 --device cpu", "PREDICT_ARGS=--device cpu")
    first = make("-j2", "ek100-recognition", "ek100-anticipation", *args, env=env)
    assert "recognition chain done" in first.stdout and "anticipation chain done" in first.stdout

    test_ids = load_segments(data / "annotations" / "EPIC_100_test_timestamps.csv")[
        "narration_id"].tolist()
    recognition = runs / "mamba-demo-recognition-s0"
    anticipation = runs / "mamba-demo-anticipation-s0"
    validate_submission(read_submission(recognition / "submission.zip"), "recognition",
                        n_verbs=4, n_nouns=5, expected_ids=test_ids)
    validate_submission(read_submission(anticipation / "submission.json"), "anticipation",
                        n_verbs=4, n_nouns=5, n_actions=min(N_ACTIONS, 20),
                        expected_ids=test_ids)
    for run in (recognition, anticipation):
        metrics = json.loads((run / "evaluation_validation.json").read_text())
        assert 0 <= metrics["action_top1"] <= 1
    # validation is also scored with questions written as the test split's are
    honest = json.loads((recognition / "evaluation_validation_recognized.json").read_text())
    assert 0 <= honest["action_top1"] <= 1
    assert '"generator": "recognized"' in (
        data / "questions" / "validation-recognized-paper.jsonl").read_text()
    # test questions come from the video-alone run's predictions, never from labels
    test_questions = (data / "questions" / "test-recognized-paper.jsonl").read_text()
    assert len(test_questions.splitlines()) == len(test_ids)
    assert '"generator": "recognized"' in test_questions

    checkpoints = {p: p.stat().st_mtime_ns for p in runs.rglob("*.pt")}
    time.sleep(0.01)
    second = make("ek100-recognition", "ek100-anticipation", *args, env=env)
    assert sys.executable not in second.stdout, second.stdout  # no stage ran again
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.pt")} == checkpoints
    assert sorted(p.name for p in runs.iterdir()) == [
        "mamba-demo-anticipation-s0", "mamba-demo-recognition-s0",
        "mamba-demo-recognition-video-s0"]

    # what a researcher reads: the report of these runs and a training console, as PNGs
    # (headless Chromium, which .ci/run installs; MAMBAVL_SCREENSHOTS=docs/screenshots keeps them)
    from reports.screenshots import BROWSERS

    if not any(shutil.which(name) for name in BROWSERS):
        return
    shots = Path(os.environ.get("MAMBAVL_SCREENSHOTS", tmp_path / "shots"))
    report = tmp_path / "report"
    python = [sys.executable, "-m"]
    subprocess.run([*python, "reports.tables", "--out", str(report)], check=True, env=env,
                   capture_output=True, cwd=ROOT)
    console = subprocess.run(
        [*python, "fusion.train", "--preset", "demo", "--data", str(data), "--epochs", "3",
         "--device", "cpu", "--out", str(tmp_path / "console-run")],
        env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    transcript = tmp_path / "console.txt"
    transcript.write_text(console.stderr + console.stdout)
    subprocess.run([*python, "reports.screenshots", "--page", str(report / "index.html"),
                    "--console", str(transcript), "--console-title",
                    "$ python -m fusion.train --preset demo --epochs 3", "--out", str(shots)],
                   check=True, capture_output=True, cwd=ROOT)
    for name in ("report.png", "console.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "epoch 3/3" in transcript.read_text() and "done: best epoch" in console.stdout

