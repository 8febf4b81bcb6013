"""fusion.console: the epoch line's format, progress in a log file, quiet and --json output,
and the header, on real training runs of the tiny synthetic dataset (`test_train`'s)."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import struct
import termios
from pathlib import Path

import pytest
import torch

from features.config import to_dict
from fusion import console
from fusion.console import (
    Console,
    epoch_line,
    final_json,
    json_line,
    loss_text,
    metric_label,
    summary,
)
from fusion.train import NOT_RESULT_FIELDS, TrainConfig, fingerprint, main, train
from tests.fusion.test_train import TEXT_STORE, config_for, make_dataset

RECORD = {"epoch": 7, "train_loss": 2.3129, "epoch_seconds": 12.43, "lr": 1.35e-05,
          "action_top1": 0.41234, "verb_top1": 0.6, "noun_top1": 0.5, "action_top5": 0.7,
          "action_recall5": 0.1234}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("console") / "demo")


def cli_args(config: TrainConfig, *extra: str) -> list[str]:
    return ["--data", str(config.data), "--epochs", str(config.epochs), "--batch-size", "8",
            "--peak-lr", "1e-2", "--ssm-peak-lr", "1e-2", "--warmup-epochs", "1",
            "--label-smoothing", "0", "--device", "cpu", "--out", str(config.out),
            "--head.d-model", "16", "--head.d-state", "4", "--text-store", TEXT_STORE,
            "--no-track", *extra]


def test_epoch_line_reads_as_percent_and_scientific_lr() -> None:
    line = epoch_line(RECORD, 100, ["action_top1"], best=0.4189, best_epoch=5)
    # padded (epochs to the width of 100, percentages to 4 characters): a log reads as a table
    assert line == "epoch   7/100  loss 2.31  action@1 41.2  best 41.9 @ 5    lr 1.35e-05  12.4s"
    anticipation = epoch_line({**RECORD, "epoch_seconds": 125.0}, 20, ["action_recall5"],
                              best=0.2, best_epoch=3)
    assert anticipation == ("epoch  7/20  loss 2.31  action R@5 12.3  best 20.0 @ 3   "
                            "lr 1.35e-05  2m05s")
    low = epoch_line({**RECORD, "action_top1": 0.03}, 9, ["action_top1"], best=0.05, best_epoch=2)
    assert low == "epoch 7/9  loss 2.31  action@1  3.0  best  5.0 @ 2  lr 1.35e-05  12.4s"
    # a selection metric other than the headline is shown too, last (the one `best` is of)
    assert "action@1 41.2  verb@1 60.0  best 60.0 @ 7" in epoch_line(
        RECORD, 100, ["action_top1", "verb_top1"], best=0.6, best_epoch=7)


def test_labels_durations_and_json_rounding() -> None:
    assert [metric_label(k) for k in ("action_top1", "noun_top5", "tail_verb_recall5",
                                      "train_loss")] == [
        "action@1", "noun@5", "tail verb R@5", "train_loss"]
    assert [loss_text(v) for v in (4.9, 0.01234, 112.0)] == ["4.90", "0.0123", "112"]
    assert [console.duration(s) for s in (0.04, 59.94, 61, 3 * 3600 + 7 * 60)] == [
        "0.0s", "59.9s", "1m01s", "3h07m"]
    record = json.loads(json_line(RECORD))
    assert record["lr"] == 1.35e-05  # today's round(v, 4) printed 0.0
    assert record["action_top1"] == 0.4123 and record["epoch"] == 7
    assert json.loads(json_line({"lr": 1.23456789e-07}))["lr"] == 1.235e-07


def test_lines_mode_writes_periodic_progress_to_a_file() -> None:
    log = io.StringIO()  # not a terminal: `auto` picks lines
    out = Console.create("auto", epochs=20, stream=log)
    assert out.mode == "lines"
    out.min_interval = 0.0
    progress = out.steps(range(25), epoch=3, total=25)
    total = torch.zeros(())
    for seen, _ in enumerate(progress, start=1):
        total += 2.0
        progress.update(total, seen)
    lines = log.getvalue().splitlines()
    # every ceil(25 / 10) = 3 steps, not on the last (the epoch line follows)
    assert [int(re.search(r"step (\d+)/25", line)[1]) for line in lines] == list(range(3, 25, 3))
    assert re.fullmatch(r"epoch  3/20  step 3/25  loss 2.00  [\d.]+ (step/s|s/step)  "
                        r"eta [\d.]+s", lines[0])


def test_lines_mode_stays_quiet_within_its_minimum_interval() -> None:
    log = io.StringIO()
    progress = Console("lines", epochs=2, stream=log).steps(range(50), epoch=1, total=50)
    for seen, _ in enumerate(progress, start=1):
        progress.update(1.0, seen)
    assert log.getvalue() == ""  # 50 quick steps: the epoch line says enough


def test_auto_draws_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal:
        assert Console.create("auto", epochs=2, stream=terminal).mode == "lines"  # 0 columns
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        assert Console.create("auto", epochs=2, stream=terminal).mode == "bar"
    os.close(primary)
    log = io.StringIO()
    monkeypatch.setattr(console, "BAR_LOSS_SECONDS", 0.0)
    progress = Console("bar", epochs=2, stream=log).steps(range(4), epoch=1, total=4)
    for seen, _ in enumerate(progress, start=1):
        progress.update(torch.tensor(3.0 * seen), seen)
    progress.close()
    assert "epoch 1/2" in log.getvalue() and "loss 3" in log.getvalue()
    assert "\r" in log.getvalue()  # drawn in place


def test_header_epoch_lines_and_summary_of_a_real_run(dataset: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = config_for(dataset, tmp_path, epochs=3, progress="lines")
    result = train(config)
    err = capsys.readouterr().err
    folder = Path(result["folder"])
    assert re.search(r"^fusion.train: mamba head, [\d,]+ parameters, recognition$", err,
                     re.MULTILINE)  # after MLflow's own log lines
    assert "  device    cpu (" in err and "fp32" in err
    assert "48 train clips, 48 validation clips" in err
    assert f"  run       {folder} (new)" in err
    assert f"  mlflow    run {result['run_id']} in {config.tracking_uri}" in err
    assert "protocol  clean; changed: " in err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3
    for number, (line, record) in enumerate(zip(epochs, torch.load(
            folder / "last.pt", weights_only=True)["state"]["history"], strict=True), 1):
        assert line.startswith(f"epoch {number}/3  loss {loss_text(record['train_loss'])}  "
                               f"action@1 {100 * record['action_top1']:4.1f}  best ")
        assert f"lr {record['lr']:.2e}" in line
    text = summary(result, "recognition", "best-epoch", 3, config.tracking_uri)
    assert text.startswith(f"done: best epoch {result['best']['epoch']}/3 (validation %): "
                           f"action@1 {100 * result['best']['action_top1']:.1f}  verb@1 ")
    assert str(folder) in text and result["run_id"] in text

    # the same command again: one line that says the run is complete, no header, no epochs
    again = train(dataclasses.replace(config, progress="bar"))
    err = capsys.readouterr().err
    assert err == f"{folder}: complete (3 of 3 epochs): nothing to train (--restart trains " \
                  "it again)\n"
    assert again["checkpoint_seconds"] == 0.0  # nothing written this time
    assert {**again, "checkpoint_seconds": result["checkpoint_seconds"]} == result


def test_quiet_mode_prints_the_final_line_only(dataset: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = config_for(dataset, tmp_path, epochs=2, track=False)
    main(cli_args(config, "--progress", "quiet"))
    captured = capsys.readouterr()
    assert captured.err == ""
    [line] = captured.out.splitlines()
    assert line.startswith("best epoch ") and "action@1 " in line
    assert line.endswith(str(config.out / "mamba-demo-recognition-s0"))


def test_json_flag_gives_parseable_json(dataset: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = config_for(dataset, tmp_path, epochs=2, track=False)
    main(cli_args(config, "--json", "--progress", "lines"))
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["run_id"] is None and result["folder"].endswith("mamba-demo-recognition-s0")
    assert 0 <= result["action_top1"] <= 1 and "epoch" not in result  # floats only, as before
    records = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["lr"] > 0 and {"train_loss", "action_top1"} <= r.keys() for r in records)
    assert "\nepoch " not in captured.err  # no human epoch lines beside the JSON

    # the console fields never change a run's fingerprint: a rerun with other ones resumes
    assert {"progress", "json"} <= NOT_RESULT_FIELDS
    assert fingerprint(to_dict(dataclasses.replace(config, progress="quiet", json=True))) == (
        fingerprint(to_dict(config)))
    main(cli_args(config, "--progress", "quiet"))
    assert capsys.readouterr().out.startswith("best epoch ")


def test_final_json_keeps_small_values() -> None:
    result = {"run_id": "r", "folder": "f", "best": {**RECORD, "lr": 1.35e-05}}
    out = json.loads(final_json(result))
    assert out["lr"] == 1.35e-05 and out["action_top1"] == 0.4123 and "epoch" not in out
