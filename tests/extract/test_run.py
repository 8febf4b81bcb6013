"""Extraction driver: video and text stores, failures, SIGKILL + resume, two ranks.

Real parts throughout: synthetic EK100 videos (`extract.synthetic`), the `vit-demo`
backbone, `ClipDataset`, template questions (`extract.questions`) and a tiny RoBERTa saved
to disk and loaded back with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.backbones import build_backbone
from extract.questions import QuestionsConfig
from extract.questions import generate as generate_questions
from extract.run import (
    TinyRobertaConfig,
    authors_reinit,
    build_tiny_roberta,
    main,
    weights_sha256,
)
from extract.synthetic import SyntheticConfig, generate
from extract.video import ClipDataset
from features.annotations import load_classes, load_split
from features.errors import HarnessError
from features.store import FeatureStore, check_aligned
from fusion.predictions import save_predictions
from tests.cli import one_error_line

REPO = Path(__file__).resolve().parents[2]
SPLIT = "train"
COMMON = ["--split", SPLIT, "--shard-rows", "4", "--batch-size", "3", "--threads", "1",
          "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic EK100 dataset: 12 training segments (3 videos) at 64x48, 10 fps."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(
        SyntheticConfig(
            out=root, videos=5, videos_per_participant=2, val_videos=1, test_videos=1,
            segments_per_video=4, width=64, height=48, fps=10.0, max_duration=1.5, workers=1,
        )
    )  # fmt: skip
    return root


def video_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "video", "--annotations", str(data / "annotations"), "--videos", str(data / "videos"),
        "--backbone", "vit-demo", "--workers", "0", "--out", str(out), *COMMON, *extra,
    ]  # fmt: skip


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "extract", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process extraction, the baseline of the resume tests."""
    out = tmp_path_factory.mktemp("reference") / "video-vit-demo.zarr"
    assert main(video_args(data, out)) == 0
    return out


def tokens(path: Path) -> np.ndarray:
    return FeatureStore(path).load()["tokens"].numpy()


def shard_files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in (path / "tokens/c").rglob("*")}


def test_video_store(data: Path, reference: Path) -> None:
    store = FeatureStore(reference)
    segments = load_split(data / "annotations", SPLIT).segments
    assert len(store) == len(segments) == 12 and store.complete and store.valid.all()
    assert list(store.narration_ids) == segments["narration_id"].tolist()
    assert store.arrays["tokens"].row_shape == (16, 128) and store.shard_rows == 4
    manifest = store.manifest
    assert manifest["backbone"]["name"] == "vit-demo" and manifest["tokens"] == "frame"
    assert manifest["frames"] == 16 and manifest["resolution"] == 112
    assert manifest["crop"] == "centre 112x112" and "mean" in manifest["normalisation"]
    assert manifest["checkpoint_sha256"] is None and len(manifest["weights_sha256"]) == 64
    assert manifest["environment"]["git_revision"] and manifest["created"]
    report = json.loads(reference.with_name("video-vit-demo.failures.json").read_text())
    assert report["complete"] and report["failed"] == []
    # the stored rows are the backbone's frame tokens of the AVION-preprocessed clips
    model = build_backbone("vit-demo").eval()
    dataset = ClipDataset(segments, data / "videos", size=112, on_error="raise")
    clips = torch.stack([dataset[i][0] for i in (0, 7)])
    with torch.inference_mode():
        expected = model.forward_features(clips, "frame").numpy()
    np.testing.assert_allclose(store.read([0, 7])["tokens"], expected, rtol=1e-2, atol=2e-3)


def test_rerun_of_complete_store_does_nothing(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    shutil.copytree(reference, out)
    before = shard_files(out)
    result = run_cli(video_args(data, out))
    assert result.returncode == 0, result.stderr
    assert "3 done; this process: 0 shards, 0 clips" in result.stderr
    assert shard_files(out) == before


def test_sigkill_before_marking_done_then_resume(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "v.zarr"
    killed = run_cli(video_args(data, out), env={"MAMBAVL_KILL_BEFORE_DONE": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = FeatureStore(out)
    assert store.done.tolist() == [True, False, False]  # shard 1's data written, not marked
    assert store.valid.sum() == 4
    first = {k: v for k, v in shard_files(out).items() if k.startswith("0")}
    resumed = run_cli(video_args(data, out))
    assert resumed.returncode == 0, resumed.stderr
    assert "1 done; this process: 2 shards, 8 clips" in resumed.stderr
    assert {k: v for k, v in shard_files(out).items() if k.startswith("0")} == first
    np.testing.assert_array_equal(tokens(out), tokens(reference))  # bitwise
    assert FeatureStore(out).manifest_hash == FeatureStore(reference).manifest_hash


def test_sigkill_at_an_arbitrary_moment_then_resume(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "v.zarr"
    process = subprocess.Popen(
        [sys.executable, "-m", "extract", *video_args(data, out, "--batch-size", "1")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "done/c/0").exists():  # first shard marked done: kill mid-run
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not after finishing
    resumed = run_cli(video_args(data, out, "--batch-size", "1"))
    assert resumed.returncode == 0, resumed.stderr
    assert "this process: 3 shards" not in resumed.stderr  # finished shards were kept
    # batch size 1 vs 3: same features up to float rounding; same batching is bitwise
    np.testing.assert_allclose(tokens(out), tokens(reference), rtol=1e-2, atol=1e-3)
    again = tmp_path / "again.zarr"
    assert main(video_args(data, again, "--batch-size", "1")) == 0
    np.testing.assert_array_equal(tokens(out), tokens(again))


def test_two_ranks_equal_one_process(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extract",
                *video_args(data, out, "--rank", str(r), "--world-size", "2"),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "this process: 2 shards, 8 clips" in outputs[0][1]  # shards 0 and 2
    assert "this process: 1 shards, 4 clips" in outputs[1][1]  # shard 1
    np.testing.assert_array_equal(tokens(out), tokens(reference))
    assert FeatureStore(out).manifest_hash == FeatureStore(reference).manifest_hash


def test_failures_are_reported_and_good_clips_written(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(data / "videos", videos)
    segments = load_split(data / "annotations", SPLIT).segments
    broken, missing = segments["video_id"].unique()[:2]
    broken_file = next(videos.glob(f"*/videos/{broken}.MP4"))
    broken_file.write_bytes(broken_file.read_bytes()[:300])  # truncated: unreadable
    next(videos.glob(f"*/videos/{missing}.MP4")).unlink()
    bad = segments["video_id"].isin([broken, missing]).to_numpy()
    args = video_args(data, tmp_path / "v.zarr")
    args[args.index("--videos") + 1] = str(videos)
    result = run_cli(args)
    assert result.returncode == 1
    assert f"{bad.sum()} clips failed" in result.stderr and "video file not found" in result.stderr
    report = json.loads((tmp_path / "v.failures.json").read_text())
    assert report["complete"]
    assert {f["narration_id"] for f in report["failed"]} == set(segments["narration_id"][bad])
    store = FeatureStore(tmp_path / "v.zarr")
    assert store.complete and store.valid.tolist() == (~bad).tolist()
    got, want = tokens(tmp_path / "v.zarr"), tokens(reference)
    np.testing.assert_array_equal(got[~bad], want[~bad])
    assert not got[bad].any()
    assert run_cli([*args, "--allow-missing"]).returncode == 0  # complete: nothing recomputed


@pytest.fixture(scope="module")
def tiny_roberta(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    questions = tmp_path_factory.mktemp("questions") / "train.jsonl"
    generate_questions(
        QuestionsConfig(annotations=data / "annotations/EPIC_100_train.csv", out=questions)
    )
    model = build_tiny_roberta(
        TinyRobertaConfig(out=tmp_path_factory.mktemp("tiny-roberta"), questions=(questions,))
    )
    return model, questions


def test_text_store(
    data: Path, reference: Path, tiny_roberta: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModel, AutoTokenizer

    model_dir, questions = tiny_roberta
    records = [json.loads(line) for line in questions.read_text().splitlines()]
    shuffled = tmp_path / "shuffled.jsonl"  # rows follow the annotations, not the file
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in records[::-1]))
    out = tmp_path / "text.zarr"
    args = ["text", "--questions", str(shuffled), "--text-model", str(model_dir),
            "--annotations", str(data / "annotations"), "--max-length", "24", "--out", str(out),
            *COMMON]  # fmt: skip
    assert main(args) == 0
    store = FeatureStore(out)
    check_aligned(store, reference)
    assert store.kind == "text" and store.complete
    assert set(store.arrays) == {"verb_tokens", "verb_mask", "noun_tokens", "noun_mask"}
    assert store.arrays["verb_tokens"].row_shape == (24, 32)
    manifest = store.manifest
    assert manifest["max_length"] == 24 and manifest["text_model"] == model_dir.name
    assert manifest["generator"] == "template" and manifest["mask"] == "paper"
    assert "predictions_in_sample" not in manifest  # template stores' manifests unchanged
    assert manifest["sources"]["text_model"] == str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    row = store.get(records[3]["narration_id"])
    encoded = tokenizer(
        [records[3]["noun_question"]], padding="max_length", max_length=24, return_tensors="pt"
    )
    with torch.inference_mode():
        states = model(**encoded).last_hidden_state[0].numpy()
    mask = encoded["attention_mask"][0].numpy().astype(bool)
    np.testing.assert_array_equal(row["noun_mask"], mask)
    np.testing.assert_allclose(row["noun_tokens"][mask], states[mask], rtol=1e-2, atol=2e-3)
    assert not row["noun_tokens"][~mask].any()
    assert main(args) == 0  # resume of a complete store: nothing to do


@pytest.mark.parametrize("in_sample", [True, None])
def test_text_manifest_records_whether_the_questions_predictions_are_in_sample(
    data: Path, tiny_roberta: tuple[Path, Path], tmp_path: Path, in_sample: bool | None
) -> None:
    """Questions written from predictions (the anticipation chain's): the text store's
    manifest carries the questions' `predictions_in_sample`, null included."""
    annotations = data / "annotations"
    ids = load_split(annotations, SPLIT).segments["narration_id"].astype(str).tolist()
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=(len(ids), len(load_classes(annotations / f"EPIC_100_{k}_classes"
                                                               ".csv"))))
              for k in ("verb", "noun")]
    predictions = save_predictions(
        tmp_path / "observed_train.npz", ids, *scores,
        source=None if in_sample is None else {"run": "runs/src", "in_sample": in_sample})
    questions = tmp_path / "train-predictions.jsonl"
    generate_questions(QuestionsConfig(annotations=annotations / "EPIC_100_train.csv",
                                       out=questions, generator="predictions",
                                       predictions=predictions))
    out = tmp_path / "text.zarr"
    assert main(["text", "--questions", str(questions), "--text-model", str(tiny_roberta[0]),
                 "--annotations", str(annotations), "--max-length", "24", "--out", str(out),
                 *COMMON]) == 0
    manifest = FeatureStore(out).manifest
    assert manifest["generator"] == "predictions"
    assert "predictions_in_sample" in manifest and manifest["predictions_in_sample"] is in_sample


def test_text_missing_questions(data: Path, tiny_roberta: tuple[Path, Path], tmp_path: Path):
    model_dir, questions = tiny_roberta
    lines = questions.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[1:]) + "\n")
    dropped = json.loads(lines[0])["narration_id"]
    with pytest.raises(SystemExit, match=f"no questions for 1 segments.*{dropped}"):
        main(["text", "--questions", str(partial), "--text-model", str(model_dir),
              "--annotations", str(data / "annotations"), "--out", str(tmp_path / "t.zarr"),
              *COMMON])  # fmt: skip


def _perturbed_roberta(tiny_roberta: tuple[Path, Path], out: Path) -> Path:
    """The tiny RoBERTa with every parameter moved off its init value (LayerNorms and biases
    included), so a re-initialisation that leaves one untouched is seen."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_roberta[0])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.rand_like(parameter) + 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_roberta[0]).save_pretrained(out)
    return out


def test_authors_reinit_is_seeded_and_changes_every_weight(
    tiny_roberta: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModel

    folder = _perturbed_roberta(tiny_roberta, tmp_path / "model")
    loaded = AutoModel.from_pretrained(folder).state_dict()
    tables = []
    for seed in (0, 0, 1):
        model = AutoModel.from_pretrained(folder)
        authors_reinit(model, seed)
        tables.append({k: v.clone() for k, v in model.named_parameters()})
    for name, value in tables[0].items():
        assert not torch.isclose(value, loaded[name]).any(), name  # every value changed
        torch.testing.assert_close(value, tables[1][name], rtol=0, atol=0)  # same seed
        if value.dim() > 1:  # random tables differ with the seed; 1-D ones are constants
            assert not torch.equal(value, tables[2][name]), name
    model = AutoModel.from_pretrained(folder)
    authors_reinit(model, 0)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert bool((module.weight == 1).all() and (module.bias == 0).all())
        if isinstance(module, torch.nn.Linear):
            assert module.bias is None or not module.bias.any()
    word = model.embeddings.word_embeddings.weight  # xavier_uniform, then untouched
    assert word.abs().max() <= (6 / sum(word.shape)) ** 0.5


@pytest.mark.parametrize("readout, init, padding", [
    ("embeddings", "pretrained", "masked"),
    ("embeddings", "authors-random", "max-length"),  # the authors' text features
    ("last-hidden", "pretrained", "max-length"),
    ("pooler", "authors-random", "max-length"),  # the authors' baselines' text features
    ("pooler", "pretrained", "masked"),
])  # fmt: skip
def test_text_readouts(
    tiny_roberta: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
    readout: str, init: str, padding: str,
) -> None:
    """Each stored row is what the loaded (or re-initialised) model gives for the question's
    40 ids; with max-length padding pads are computed like tokens, with no attention mask.
    The pooler readout stores `pooler_output` as the question's one (real) token."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = _perturbed_roberta(tiny_roberta, tmp_path / "tiny-roberta")
    records = [json.loads(line) for line in tiny_roberta[1].read_text().splitlines()]
    args = ["text", "--questions", str(tiny_roberta[1]), "--text-model", str(model_dir),
            "--readout", readout, "--init", init, "--seed", "3", "--padding", padding,
            "--max-length", "40", "--root", str(tmp_path / "features"), "--dataset", "d",
            *COMMON]  # fmt: skip
    assert main(args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "authors-random" in line]
    assert len(notes) == (init == "authors-random")
    suffix = {("embeddings", "pretrained", "masked"): "-emb-len40",
              ("embeddings", "authors-random", "max-length"): "-emb-authorsrandom-s3-len40-nomask",
              ("last-hidden", "pretrained", "max-length"): "-len40-nomask",
              ("pooler", "authors-random", "max-length"): "-pooler-authorsrandom-s3-len40-nomask",
              ("pooler", "pretrained", "masked"): "-pooler-len40"}[readout, init, padding]
    store = FeatureStore(tmp_path / f"features/d/{SPLIT}/text-tiny-roberta-template-paper"
                         f"{suffix}.zarr")  # fmt: skip
    manifest = store.manifest
    assert (manifest["readout"], manifest["text_init"], manifest["padding"]) == (
        readout, init, padding)
    assert manifest["text_init_seed"] == (3 if init == "authors-random" else None)
    tokens = 1 if readout == "pooler" else 40
    assert manifest["max_length"] == 40 and manifest["token_shape"] == [tokens, 32]
    assert store.arrays["noun_tokens"].row_shape == (tokens, 32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    if init == "authors-random":
        authors_reinit(model, 3)
    assert manifest["text_model_weights_sha256"] == weights_sha256(model)
    for record in records[:3]:
        encoded = tokenizer([record["verb_question"]], padding="max_length", truncation=True,
                            max_length=40, return_tensors="pt")  # fmt: skip
        mask = encoded["attention_mask"][0].numpy().astype(bool)
        assert 0 < mask.sum() < 40  # the question has real tokens and pads
        row = store.get(record["narration_id"])
        if readout == "pooler":
            inputs = dict(encoded) if padding == "masked" else {"input_ids": encoded.input_ids}
            with torch.inference_mode():
                out = model(**inputs)
                # the pooler is tanh(dense(token 0)) of the (re-initialised) model's own layer
                assert torch.equal(out.pooler_output, model.pooler.activation(
                    model.pooler.dense(out.last_hidden_state[:, 0])))
            assert row["verb_mask"].tolist() == [True]
            np.testing.assert_allclose(row["verb_tokens"], out.pooler_output.numpy(), rtol=1e-2,
                                       atol=2e-3)  # fmt: skip
            assert np.abs(row["verb_tokens"]).max() > 1e-2  # not a zero row
            continue
        with torch.inference_mode():
            if readout == "embeddings":
                want = model.embeddings(input_ids=encoded.input_ids)[0].numpy()
            else:  # no attention mask: pads are attended to, as in the authors' code
                want = model(input_ids=encoded.input_ids).last_hidden_state[0].numpy()
        np.testing.assert_array_equal(row["verb_mask"], mask)  # True on real tokens
        if padding == "masked":
            np.testing.assert_allclose(row["verb_tokens"][mask], want[mask], rtol=1e-2,
                                       atol=2e-3)  # fmt: skip
            assert not row["verb_tokens"][~mask].any()
        else:
            np.testing.assert_allclose(row["verb_tokens"], want, rtol=1e-2, atol=2e-3)
            assert np.abs(row["verb_tokens"][~mask]).sum(-1).min() > 0  # pads hold features


def test_pooler_readout_needs_pooler_weights(tiny_roberta: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    """A checkpoint without pooler weights gives a random pooler: refused unless the weights
    are re-initialised on purpose (--init authors-random), which draws them all anyway."""
    from transformers import AutoTokenizer, RobertaModel

    folder = tmp_path / "no-pooler"
    RobertaModel.from_pretrained(tiny_roberta[0], add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_roberta[0]).save_pretrained(folder)
    args = ["text", "--questions", str(tiny_roberta[1]), "--text-model", str(folder),
            "--readout", "pooler", "--out", str(tmp_path / "t.zarr"), *COMMON]  # fmt: skip
    with pytest.raises(HarnessError, match="no pooler weights") as error:
        main(args)
    assert "\n" not in str(error.value) and "pooler.dense.weight" in str(error.value)
    assert not (tmp_path / "t.zarr").exists()
    assert main([*args, "--init", "authors-random"]) == 0
    assert FeatureStore(tmp_path / "t.zarr").arrays["verb_tokens"].row_shape == (1, 32)


def test_segment_past_the_end_of_its_video_is_a_failure(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    import pandas as pd

    annotations = tmp_path / "annotations"
    shutil.copytree(data / "annotations", annotations)
    csv = annotations / "EPIC_100_train.csv"
    table = pd.read_csv(csv)
    table.loc[5, ["start_frame", "stop_frame"]] = [400, 450]  # the videos are <= 15 frames
    table.to_csv(csv, index=False)
    args = video_args(data, tmp_path / "v.zarr", "--allow-missing")
    args[args.index("--annotations") + 1] = str(annotations)
    assert main(args) == 0
    store = FeatureStore(tmp_path / "v.zarr")
    nid = table["narration_id"][5]
    assert store.complete and store.valid.tolist() == [i != 5 for i in range(12)]
    assert "past the video's last frame" in store.failures()[nid]
    report = json.loads((tmp_path / "v.failures.json").read_text())
    assert [f["narration_id"] for f in report["failed"]] == [nid]
    got, want = tokens(tmp_path / "v.zarr"), tokens(reference)
    assert not got[5].any()  # zeros, not features of one repeated last frame
    np.testing.assert_array_equal(np.delete(got, 5, 0), np.delete(want, 5, 0))


def test_retry_failed_recomputes_only_the_failed_clips(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(data / "videos", videos)
    segments = load_split(data / "annotations", SPLIT).segments
    missing = segments["video_id"].iloc[5]
    moved = next(videos.glob(f"*/videos/{missing}.MP4"))
    aside = tmp_path / "aside.MP4"
    moved.rename(aside)  # its clips fail, written as zeros under --allow-missing
    bad = (segments["video_id"] == missing).to_numpy()
    out = tmp_path / "v.zarr"
    args = video_args(data, out)
    args[args.index("--videos") + 1] = str(videos)
    assert main([*args, "--allow-missing"]) == 0
    assert (~FeatureStore(out).valid).tolist() == bad.tolist()
    before = tokens(out)
    failed_shards = {str(k) for k in np.flatnonzero(bad) // 4}
    untouched = {k: v for k, v in shard_files(out).items()  # "tokens/c/<shard>/0/0"
                 if len(k.split("/")) > 2 and k.split("/")[2] not in failed_shards}
    assert untouched  # shards without failures exist, and must not be rewritten
    aside.rename(moved)  # the video is back
    result = run_cli([*args, "--retry-failed"])
    assert result.returncode == 0, result.stderr
    assert f"this process: {len(failed_shards)} shards, {bad.sum()} clips" in result.stderr
    store = FeatureStore(out)
    assert store.complete and store.valid.all() and store.failures() == {}
    after = tokens(out)
    np.testing.assert_array_equal(after[~bad], before[~bad])  # good rows bitwise unchanged
    np.testing.assert_allclose(after[bad], tokens(reference)[bad], rtol=1e-2, atol=1e-3)
    assert {k: v for k, v in shard_files(out).items() if k in untouched} == untouched
    report = json.loads((tmp_path / "v.failures.json").read_text())
    assert report["complete"] and report["failed"] == []


def test_retry_failed_needs_an_existing_store(data: Path, tmp_path: Path) -> None:
    result = run_cli(video_args(data, tmp_path / "none.zarr", "--retry-failed"))
    assert "none.zarr" in one_error_line(result)
    assert not (tmp_path / "none.zarr").exists()


# ------------------------------------------------- issue 14: weights, preprocessing, dry run


def test_pretrained_backbone_without_checkpoint_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    result = run_cli(["video", "--preset", "vitb", "--annotations", str(data / "annotations"),
                      "--videos", str(data / "videos"), "--out", str(out), "--device", "cpu"])
    line = one_error_line(result)
    assert "avion_finetune_cls_lavila_vitb_best.pt" in line and "--random-init" in line
    assert "MODEL_ZOO" in line and not out.exists()


def test_random_init_is_recorded_and_avion_preprocessing_named(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    args = video_args(data, out, "--random-init", "--preprocess", "avion", "--resize",
                      "torchvision", "--limit", "4")
    assert main(args) == 0
    manifest = FeatureStore(out).manifest
    assert manifest["weights"] == "random-init"
    pre = manifest["preprocess"]
    assert pre["name"] == "avion+resize=torchvision" and pre["timeline"] == "avion-30fps"
    assert pre["mean"] == [108.3272985, 116.7460125, 104.09373615] and pre["precision"] == "fp16"
    assert manifest["clip"]["timeline_fps"] == 30.0
    result = run_cli(["video", "--annotations", "x", "--checkpoint", "c.pt", "--random-init"])
    assert "contradict" in one_error_line(result)


def test_demo_store_keeps_its_old_preprocessing(reference: Path) -> None:
    manifest = FeatureStore(reference).manifest
    assert manifest["weights"] == "random-init" and manifest["preprocess"]["name"] == "ours-v1"


def test_clips_dry_run_prints_each_clips_frames(data: Path) -> None:
    result = run_cli(["clips", "--preset", "vitb", "--data", str(data), "--split", SPLIT,
                      "--limit", "3", "--json"])
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    segments = load_split(data / "annotations", SPLIT).segments.iloc[:3]
    assert [r["narration_id"] for r in records] == segments["narration_id"].tolist()
    for record, row in zip(records, segments.itertuples(), strict=True):
        assert record["fps"] == 30.0 and len(record["frame_ids"]) == 16
        assert record["sources"] == [str(data / "videos" / row.participant_id / "videos"
                                         / f"{row.video_id}.MP4")]
        h, m, sec = row.start_timestamp.split(":")
        start = round((int(h) * 3600 + int(m) * 60 + float(sec)) * 30)
        assert record["frame_ids"][0] >= start and record["frame_ids"] == sorted(
            record["frame_ids"])
        # the 10 fps video: 30 fps frame k is native frame ceil((k + 1/2) / 3) - 1 (fps filter)
        assert record["source_frame_ids"] == [-(-(2 * k + 1) // 6) for k in record["frame_ids"]]
    native = run_cli(["clips", "--data", str(data), "--split", SPLIT, "--limit", "1", "--json",
                      "--preprocess", "ours-v1"])
    [record] = [json.loads(line) for line in native.stdout.splitlines()]
    assert record["fps"] == 10.0
    assert record["frame_ids"] == [i - 1 for i in record["source_frame_ids"]]
