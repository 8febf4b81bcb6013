from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.annotations import AnnotationError, load_classes, load_segments, load_split
from features.safeload import UnsafePickleError
from tests.conftest import HEADER, SEGMENTS, write_tiny_ek100


def test_loads_tiny_split(tiny_ek100: Path) -> None:
    split = load_split(tiny_ek100, "validation")
    assert len(split.segments) == 6 and split.labelled
    assert split.segments["all_nouns"].iloc[2] == ["tap:water"]
    assert split.segments["all_noun_classes"].iloc[0] == [2]
    assert split.verbs.instances[1] == ("put-down", "place-down", "set-down")
    assert split.segments["start_frame"].dtype == "int64"


def test_pickle_twin_equals_csv(tiny_ek100: Path) -> None:
    csv = load_segments(tiny_ek100 / "EPIC_100_validation.csv")
    raw = pd.read_csv(tiny_ek100 / "EPIC_100_validation.csv").set_index("narration_id")
    raw.to_pickle(tiny_ek100 / "twin.pkl")
    pkl = load_segments(tiny_ek100 / "twin.pkl")
    pd.testing.assert_frame_equal(csv, pkl[csv.columns])


def _bad(tmp_path: Path, row: int, column: str, value: str) -> Path:
    rows = [r.split(",", 14) for r in SEGMENTS]
    rows[row][HEADER.split(",").index(column)] = value
    return write_tiny_ek100(tmp_path / "bad", [",".join(r) for r in rows])


@pytest.mark.parametrize(
    ("row", "column", "value", "expected"),
    [
        (2, "stop_frame", "10", "line 4: field 'stop_frame'"),
        (3, "narration_id", "P01_01_0", "line 5: field 'narration_id'"),
        (1, "verb_class", "7", "line 3: field 'verb_class': 7 is not a class id"),
        (0, "noun_class", "-1", "line 2: field 'noun_class'"),
        (4, "start_frame", "abc", "line 6: field 'start_frame': 'abc' is not an integer"),
        (5, "all_nouns", "[cupboard", "line 7: field 'all_nouns'"),
    ],
)
def test_bad_rows_name_file_row_and_field(
    tmp_path: Path, row: int, column: str, value: str, expected: str
) -> None:
    root = _bad(tmp_path, row, column, value)
    with pytest.raises(AnnotationError) as error:
        load_split(root, "validation")
    message = str(error.value)
    assert "EPIC_100_validation.csv" in message and expected in message
    assert "\n" not in message


def test_pickle_payload_is_refused_and_does_not_run(tiny_ek100: Path) -> None:
    marker = tiny_ek100 / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    frame = pd.read_csv(tiny_ek100 / "EPIC_100_validation.csv")
    frame.attrs["hook"] = Payload()  # a DataFrame that also carries code
    frame.to_pickle(tiny_ek100 / "evil.pkl")
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refused.*--trust-pickle"):
        load_segments(tiny_ek100 / "evil.pkl")
    assert not marker.exists()


def _lines(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "EPIC_100_validation.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        ((HEADER + "\n" + SEGMENTS[0].replace("take plate", "tak\xe9 plate") + "\n")
         .encode("latin-1"), "is not UTF-8"),
        (HEADER + "\n" + SEGMENTS[0] + "\n" + SEGMENTS[1] + ",x,y\n", "not a well-formed CSV"),
        (HEADER + "\n" + SEGMENTS[0].replace(",1,113,", ",,113,") + "\n",
         "line 2: field 'start_frame': empty, not an integer"),
        (HEADER + "\n", "no rows (only a header)"),
        (HEADER + "\n" + SEGMENTS[0] + "\n," + SEGMENTS[1].split(",", 1)[1] + "\n",
         "line 3: field 'narration_id': empty"),
        (HEADER + "\n" + SEGMENTS[0] + "\n  ," + SEGMENTS[1].split(",", 1)[1] + "\n",
         "line 3: field 'narration_id': empty"),
    ],
    ids=["empty", "latin-1", "malformed", "empty-int", "header-only", "empty-id", "blank-id"],
)
def test_bad_csv_files_are_one_line_errors(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    path = _lines(tmp_path, content)
    with pytest.raises(AnnotationError) as error:
        load_segments(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    assert "EK100_ANNOTATIONS" not in message


def test_header_only_class_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "EPIC_100_verb_classes.csv"
    path.write_text("id,key,instances,category\n")
    with pytest.raises(AnnotationError, match="no rows"):
        load_classes(path)


def test_missing_column_and_file(tiny_ek100: Path) -> None:
    frame = pd.read_csv(tiny_ek100 / "EPIC_100_validation.csv").drop(columns=["stop_frame"])
    frame.to_csv(tiny_ek100 / "EPIC_100_train.csv", index=False)
    with pytest.raises(AnnotationError, match="missing column.*stop_frame"):
        load_split(tiny_ek100, "train")
    with pytest.raises(AnnotationError, match="file not found.*make annotations.*--annotations"):
        load_split(tiny_ek100, "test")


def test_class_ids_must_be_in_order(tmp_path: Path) -> None:
    path = tmp_path / "EPIC_100_verb_classes.csv"
    path.write_text("id,key,instances,category\n0,take,\"['take']\",x\n2,put,\"['put']\",y\n")
    with pytest.raises(AnnotationError, match="line 3: field 'id': expected 1, got 2"):
        load_classes(path)


def test_unlabelled_test_timestamps(tiny_ek100: Path) -> None:
    frame = pd.read_csv(tiny_ek100 / "EPIC_100_validation.csv")
    columns = ["narration_id", "participant_id", "video_id", "start_timestamp",
               "stop_timestamp", "start_frame", "stop_frame"]
    frame[columns].to_csv(tiny_ek100 / "EPIC_100_test_timestamps.csv", index=False)
    split = load_split(tiny_ek100, "test")
    assert not split.labelled and len(split.segments) == 6


def test_real_ek100_files(ek100_root: Path) -> None:
    validation = load_split(ek100_root, "validation")
    assert len(validation.segments) == 9668
    assert (len(validation.verbs), len(validation.nouns)) == (97, 300)
    assert "tap:water" in validation.nouns.instances[0]
    train = load_segments(
        ek100_root / "EPIC_100_uda_source_train.csv", validation.verbs, validation.nouns
    )
    assert len(train) == 16115
