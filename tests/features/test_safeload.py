"""Safe loading of user pickles: plain data loads, anything else is refused and never runs."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from features.safeload import (
    PICKLE_GLOBALS,
    UnreadableFileError,
    UnsafePickleError,
    load_pickle,
    load_torch,
)


class Payload:
    """Unpickling this creates `path`: a harmless stand-in for code in a downloaded file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


class SecondStage:
    """A pickle that asks pandas to read another (unrestricted) pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (pd.read_pickle, (str(self.path),))


def ek100_frame() -> pd.DataFrame:
    """EK100 segment columns and dtypes: str ids/timestamps, int frames, list cells."""
    return pd.DataFrame({
        "narration_id": ["P01_01_0", "P01_01_1"],
        "participant_id": ["P01", "P01"],
        "video_id": ["P01_01", "P01_01"],
        "narration_timestamp": ["00:00:00.560", "00:00:01.700"],
        "start_timestamp": ["00:00:00.00", "00:00:01.56"],
        "stop_timestamp": ["00:00:01.89", "00:00:02.45"],
        "start_frame": [1, 93],
        "stop_frame": [113, 147],
        "narration": ["take plate", None],
        "verb": ["take", "put-down"],
        "verb_class": [0, 1],
        "noun": ["plate", "knife"],
        "noun_class": [2, 1],
        "all_nouns": [["plate"], ["knife", "fork"]],
        "all_noun_classes": [[2], [1, 5]],
    })


def frames() -> dict[str, pd.DataFrame]:
    frame = ek100_frame()
    timed = frame.assign(start=pd.to_timedelta(frame["start_timestamp"]),
                         day=pd.to_datetime(["2020-01-01", "2020-01-02"]))
    return {
        "range index": frame,
        "narration_id index": frame.set_index("narration_id"),
        "object columns": frame.astype({"narration_id": object, "verb": object}),
        "python strings": frame.astype({"narration_id": pd.StringDtype("python")}),
        "timestamps": timed,
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("name", list(frames()))
def test_ek100_dataframes_load_safely(tmp_path: Path, name: str, protocol: int) -> None:
    frame = frames()[name]
    path = tmp_path / "segments.pkl"
    path.write_bytes(pickle.dumps(frame, protocol=protocol))
    pd.testing.assert_frame_equal(load_pickle(path), frame)


def test_c1_results_load_safely(tmp_path: Path) -> None:
    results = {"verb_output": np.random.default_rng(0).random((3, 97), dtype=np.float32),
               "noun_output": np.zeros((3, 300)), "narration_id": np.asarray(list("abc"), object)}
    rows = [{"verb_output": np.ones(97), "narration_id": "a", "score": np.float64(1.5)}]
    for data in (results, rows):
        path = tmp_path / "results.pkl"
        path.write_bytes(pickle.dumps(data))
        loaded = load_pickle(path)
        pairs = zip(loaded, data, strict=True) if isinstance(data, list) else [(loaded, data)]
        for got, want in pairs:
            assert got.keys() == want.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
                assert type(got[key]) is type(want[key])


@pytest.mark.parametrize("payload", [Payload, SecondStage])
def test_payload_is_refused_and_does_not_run(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "ran"
    inner = tmp_path / "inner.pkl"
    inner.write_bytes(pickle.dumps(Payload(marker)))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"verb_output": np.zeros(3),
                                   "x": payload(marker if payload is Payload else inner)}))
    with pytest.raises(UnsafePickleError) as error:
        load_pickle(path)
    message = str(error.value)
    assert str(path) in message and "--trust-pickle" in message and "\n" not in message
    assert ("pathlib" if payload is Payload else "read_pickle") in message
    assert not marker.exists()


def test_allow_list_names_single_globals_only() -> None:
    """No module prefix and no loader: each entry is one exact data constructor."""
    assert all("." in name and not name.endswith(".") for name in PICKLE_GLOBALS)
    assert not any("read_" in name or name.startswith(("os.", "posix.", "subprocess"))
                   for name in PICKLE_GLOBALS)


def test_trust_pickle_unpickles_fully_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "trusted.pkl"
    path.write_bytes(pickle.dumps({"x": Payload(marker)}))
    load_pickle(path, trust_pickle=True)
    assert marker.exists()  # the flag means it: only for files you trust
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {path}: refused")


def test_safe_files_load_without_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "segments.pkl"
    ek100_frame().to_pickle(path)
    load_pickle(path, trust_pickle=True)
    assert capsys.readouterr().err == ""


def avion_like(path: Path, **extra: object) -> Path:
    """AVION's fine-tuning checkpoint layout (scripts/main_lavila_finetune_cls.py)."""
    actions = pd.DataFrame.from_dict({"verb": [0, 1], "noun": [2, 3]})
    args = argparse.Namespace(model="CLIP_VITB16", lr=3e-3, betas=(0.9, 0.999),
                              mapping_act2v={0: 0, 1: 1}, actions=actions, **extra)
    torch.save({"epoch": 1, "state_dict": {"module.visual.conv1.weight": torch.ones(2, 3)},
                "scaler": {"scale": 65536.0}, "best_acc1": np.float64(0.25), "args": args}, path)
    return path


def test_torch_checkpoint_with_namespace_and_dataframe_loads_safely(tmp_path: Path) -> None:
    obj, full = load_torch(avion_like(tmp_path / "ckpt.pt"))
    assert not full and isinstance(obj["args"], argparse.Namespace)
    assert obj["args"].actions["noun"].tolist() == [2, 3] and obj["best_acc1"] == 0.25
    assert torch.equal(obj["state_dict"]["module.visual.conv1.weight"], torch.ones(2, 3))


def test_torch_payload_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = avion_like(tmp_path / "evil.pt", hook=Payload(marker))
    with pytest.raises(UnsafePickleError, match=r"evil.pt: refused .*builtins.getattr"):
        load_torch(path)
    assert not marker.exists()
    obj, full = load_torch(path, trust_pickle=True)
    assert full and marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a pickle at all\x00\x01", b"\x80\x05\x95"])
@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_bad_files_are_one_line_errors(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as error:
        (load_pickle if suffix == ".pkl" else load_torch)(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert ("empty file" if not content else "not a readable") in message


def test_truncated_torch_file(tmp_path: Path) -> None:
    path = avion_like(tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnreadableFileError, match=r"cut.pt: not a readable PyTorch file"):
        load_torch(path)
