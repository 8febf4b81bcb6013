"""EK100 annotation files: loading and validation.

Every later stage trusts these tables, so a bad row stops here with one line naming the
file, the row and the field. Files follow the official `epic-kitchens-100-annotations`
layout: `EPIC_100_{train,validation}.{csv,pkl}`, `EPIC_100_test_timestamps.{csv,pkl}` and
`EPIC_100_{verb,noun}_classes.csv`. Python-list cells (`instances`, `all_nouns`,
`all_noun_classes`) are parsed with `ast.literal_eval`, never `eval`. `.pkl` files are read
with `features.safeload` (plain DataFrames only, unless `trust_pickle`), and library errors
on a bad file (empty, not UTF-8, malformed CSV, not a pickle) become one-line errors too.
"""

from __future__ import annotations

import ast
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.errors import HarnessError, one_line
from features.safeload import load_pickle

SPLITS = ("train", "validation", "test")
TIMING_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
)
LABEL_COLUMNS = ("narration", "verb", "verb_class", "noun", "noun_class")
CLASS_COLUMNS = ("id", "key", "instances", "category")
LIST_COLUMNS = ("all_nouns", "all_noun_classes")
GET_FILES = "run `make annotations` to download them, or point --annotations at your copy"


class AnnotationError(HarnessError, ValueError):
    """A problem in an annotation file, always phrased as `file:row: field: what to do`."""


@dataclass(frozen=True)
class ClassTable:
    """One of `EPIC_100_{verb,noun}_classes.csv`: ids are 0..K-1 in file order."""

    keys: tuple[str, ...]
    instances: tuple[tuple[str, ...], ...]
    categories: tuple[str, ...]
    path: Path

    def __len__(self) -> int:
        return len(self.keys)


def _row(path: Path, index: int) -> str:
    """Human row reference: the line number in a CSV (header is line 1), else the index."""
    return f"{path}:line {index + 2}" if path.suffix == ".csv" else f"{path}:row {index}"


def read_csv_file(path: Path, **kwargs: object) -> pd.DataFrame:
    """`pd.read_csv` whose errors on a bad file are one `AnnotationError` naming it."""
    if not path.exists():
        raise AnnotationError(f"{path}: file not found; {GET_FILES}")
    try:
        with warnings.catch_warnings():  # rows longer than the header: an error, not a
            warnings.simplefilter("error", pd.errors.ParserWarning)  # silent index column
            return pd.read_csv(path, index_col=False, **kwargs)
    except pd.errors.ParserWarning:
        raise AnnotationError(
            f"{path}: a row has more fields than the header; check quoting and commas"
        ) from None
    except pd.errors.EmptyDataError:
        raise AnnotationError(f"{path}: empty file (no header, no rows); {GET_FILES}") from None
    except UnicodeDecodeError as error:
        raise AnnotationError(
            f"{path}: byte {error.start} is not UTF-8 ({error.reason}); EK100 files are UTF-8: "
            f"re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    except pd.errors.ParserError as error:
        raise AnnotationError(
            f"{path}: not a well-formed CSV ({one_line(error)}); check quoting and the number "
            "of fields on that line"
        ) from None


def _read_table(path: Path, trust_pickle: bool = False) -> pd.DataFrame:
    if not path.exists():
        raise AnnotationError(f"{path}: file not found; {GET_FILES}")
    if path.suffix == ".pkl":
        frame = load_pickle(path, trust_pickle)
        if not isinstance(frame, pd.DataFrame):
            raise AnnotationError(f"{path}: holds a {type(frame).__name__}, not a pandas "
                                  "DataFrame of EK100 segments")
        if "narration_id" not in frame.columns and frame.index.name in ("narration_id", "uid"):
            frame = frame.reset_index()
        frame = frame.reset_index(drop=True)
    else:
        frame = read_csv_file(path, keep_default_na=False, na_values=[""])
    if frame.empty:
        raise AnnotationError(f"{path}: no rows (only a header); an annotation file lists at "
                              f"least one row; {GET_FILES}")
    return frame


def _parse_list(path: Path, index: int, field: str, cell: object) -> list:
    if isinstance(cell, list | tuple):
        return list(cell)
    try:
        value = ast.literal_eval(str(cell))
    except (ValueError, SyntaxError):
        raise AnnotationError(
            f"{_row(path, index)}: field '{field}': {cell!r} is not a Python list literal"
        ) from None
    if not isinstance(value, list | tuple):
        raise AnnotationError(
            f"{_row(path, index)}: field '{field}': expected a list, got {cell!r}"
        )
    return list(value)


def _require_columns(path: Path, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnnotationError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the EK100 header "
            f"({', '.join(columns)})"
        )


def _require_ints(path: Path, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            index = int(bad.to_numpy().nonzero()[0][0])
            cell = frame[column].iloc[index]
            raise AnnotationError(
                f"{_row(path, index)}: field '{column}': "
                f"{'empty, not' if pd.isna(cell) else repr(cell) + ' is not'} an integer"
            )
        frame[column] = values.astype("int64")


def load_classes(path: str | os.PathLike) -> ClassTable:
    """Load a class file and check ids run 0..K-1 so they can index logits directly."""
    path = Path(path)
    frame = _read_table(path)
    _require_columns(path, frame, CLASS_COLUMNS)
    _require_ints(path, frame, ("id",))
    for index, class_id in enumerate(frame["id"]):
        if class_id != index:
            raise AnnotationError(
                f"{_row(path, index)}: field 'id': expected {index}, got {class_id}; "
                "class ids must be 0..K-1 in order"
            )
    instances = tuple(
        tuple(str(s) for s in _parse_list(path, i, "instances", cell))
        for i, cell in enumerate(frame["instances"])
    )
    return ClassTable(
        keys=tuple(str(k) for k in frame["key"]),
        instances=instances,
        categories=tuple(str(c) for c in frame["category"]),
        path=path,
    )


def load_segments(
    path: str | os.PathLike,
    verbs: ClassTable | None = None,
    nouns: ClassTable | None = None,
    trust_pickle: bool = False,
) -> pd.DataFrame:
    """Load a segment file (labelled or test timestamps) and validate every row.

    Labels are required when the file has any label column; class ids are checked against
    `verbs`/`nouns` when given. The result has a fresh RangeIndex in file order. A `.pkl`
    is fully unpickled (running its code) only with `trust_pickle`.
    """
    path = Path(path)
    frame = _read_table(path, trust_pickle)
    _require_columns(path, frame, TIMING_COLUMNS)
    labelled = any(c in frame.columns for c in LABEL_COLUMNS)
    if labelled:
        _require_columns(path, frame, LABEL_COLUMNS)
    int_columns = ("start_frame", "stop_frame") + (("verb_class", "noun_class") if labelled else ())
    _require_ints(path, frame, int_columns)

    blank = frame["narration_id"].isna() | (frame["narration_id"].astype(str).str.strip() == "")
    if blank.any():
        index = int(blank.to_numpy().nonzero()[0][0])
        raise AnnotationError(
            f"{_row(path, index)}: field 'narration_id': empty ({int(blank.sum())} row(s) in "
            "all); every segment needs its id: fill it in or drop the row"
        )
    frame["narration_id"] = frame["narration_id"].astype(str)
    duplicated = frame["narration_id"].duplicated()
    if duplicated.any():
        index = int(duplicated.to_numpy().nonzero()[0][0])
        first = int((frame["narration_id"] == frame["narration_id"].iloc[index]).idxmax())
        raise AnnotationError(
            f"{_row(path, index)}: field 'narration_id': {frame['narration_id'].iloc[index]!r} "
            f"duplicates {_row(path, first)}; narration ids must be unique"
        )
    backwards = frame["stop_frame"] < frame["start_frame"]
    if backwards.any():
        index = int(backwards.to_numpy().nonzero()[0][0])
        raise AnnotationError(
            f"{_row(path, index)}: field 'stop_frame': {frame['stop_frame'].iloc[index]} < "
            f"start_frame {frame['start_frame'].iloc[index]}; fix or drop the segment"
        )
    if labelled:
        for field, table in (("verb_class", verbs), ("noun_class", nouns)):
            if table is None:
                continue
            outside = (frame[field] < 0) | (frame[field] >= len(table))
            if outside.any():
                index = int(outside.to_numpy().nonzero()[0][0])
                raise AnnotationError(
                    f"{_row(path, index)}: field '{field}': {frame[field].iloc[index]} is not a "
                    f"class id of {table.path} (0..{len(table) - 1})"
                )
        for field in LIST_COLUMNS:
            if field in frame.columns:
                frame[field] = [_parse_list(path, i, field, c) for i, c in enumerate(frame[field])]
    return frame


@dataclass(frozen=True)
class Split:
    """A validated split together with the class tables its ids refer to."""

    name: str
    segments: pd.DataFrame
    verbs: ClassTable
    nouns: ClassTable

    @property
    def labelled(self) -> bool:
        return "verb_class" in self.segments.columns


def split_path(root: str | os.PathLike, split: str) -> Path:
    """The annotation file of `split` under `root`, preferring the CSV over the pickle."""
    if split not in SPLITS:
        raise AnnotationError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    stem = "EPIC_100_test_timestamps" if split == "test" else f"EPIC_100_{split}"
    root = Path(root)
    for suffix in (".csv", ".pkl"):
        if (root / f"{stem}{suffix}").exists():
            return root / f"{stem}{suffix}"
    return root / f"{stem}.csv"


def load_split(root: str | os.PathLike, split: str, trust_pickle: bool = False) -> Split:
    """Load `split` and the class files from an annotation folder, validated together."""
    root = Path(root)
    verbs = load_classes(root / "EPIC_100_verb_classes.csv")
    nouns = load_classes(root / "EPIC_100_noun_classes.csv")
    segments = load_segments(split_path(root, split), verbs, nouns, trust_pickle)
    return Split(split, segments, verbs, nouns)
