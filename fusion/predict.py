"""A trained run's predictions for any split, labelled or not (the EK100 test timestamps).

    python -m fusion.predict --run runs/mamba-vitl-recognition-s0 --split test
    python -m fusion.export --predictions runs/mamba-vitl-recognition-s0/predictions_test.npz \
        --annotations data/ek100/annotations/EPIC_100_test_timestamps.csv --out test.zip

Training scores only its validation split (`predictions_best.npz`); a challenge submission
needs the test split, which has no labels. This reads the run folder (`config.json`, checked
against `fingerprint.json`), rebuilds the head exactly as `fusion.train` built it
(`head_choice`: protocol, head options, modalities), loads `best.pt` (or `--checkpoint
last`, `weights_only`), opens the split's stores with the run's store names (`open_stores`:
`<data>/features/<dataset>/<split>/{video,text}-<name>.zarr`; split `test` is what
`extract video --split test` writes, from `EPIC_100_test_timestamps.csv`) and writes verb
and noun logits per narration id with `save_predictions`, as training writes
`predictions_best.npz` (no action arrays: action scores are formed from verb x noun by the
metrics and the exporter). Same batch size, dtype and autocast as training's validation, so
`--split validation` reproduces `predictions_best.npz` exactly.

Rows that failed extraction (`--failed`): `exclude` leaves them out and counts them on
stderr, as training does; `refuse` stops, naming the store and the fix. `auto` (default)
refuses on `test`, where a submission needs a score for every segment (the exporter and
the challenge server reject a file that lacks one), and excludes elsewhere. On `test` the
stores must also hold every segment of the timestamps file (a `--limit`ed extraction is
refused under `refuse`). Unwritten shards are always refused (`open_stores`). `prior`
(an explicit choice, counted on stderr) scores them with the train split's class frequencies
(add-one), what a model without input would predict: for clips never filmed, such as an
anticipation window wholly before its video's start, where a challenge file still needs a row.

`--video-store` / `--text-store` read other stores of the split than the run's: the EK100
chains (Makefile) score a recognition run on the observed windows before each action (the
`-anticipation` video store) to write anticipation questions, and the test split with
questions written from predictions (no labels exist there). Those stores are checked against
the run's training stores like any other, except for what the override is for, named on
stderr: the clip window (`clip.task`, `clip.observed_s`, `clip.gap_s`) for a video store, the
questions' `generator` for a text store.

The file records where it came from (`fusion.predictions.read_source`): the run, checkpoint,
split, the run's train split, and `in_sample`, true when the split scored is the one the run
was trained on. The EK100 anticipation chain scores its source run on the train split's
observed windows to write the train questions: those predictions are in-sample, said on
stderr, and `extract.questions` carries the flag into each question record
(`predictions_in_sample`) and `extract text` into the text store's manifest.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch

from features import errors
from features.annotations import load_classes, load_segments, load_split, split_path
from features.config import to_dict
from features.store import FeatureStore, StoreError, check_aligned, failure_report_path
from fusion.data import (
    FeatureSplit,
    StreamedSplit,
    check_compatible,
    kept_rows,
    open_stores,
    split_features,
)
from fusion.heads import build_head
from fusion.heads.base import HeadConfigError
from fusion.predictions import save_predictions
from fusion.train import (
    FINGERPRINT_FILE,
    HeadConfig,
    RunFolderError,
    TrainConfig,
    autocast_dtype,
    fingerprint,
    head_choice,
    load_checkpoint,
    predict,
    setting_changes,
)


@dataclass
class PredictConfig:
    """Write a trained run's predictions for one split (test: for a challenge submission)."""

    run: Path
    """Run folder of `fusion.train` (holds config.json, fingerprint.json, best.pt)."""
    split: Literal["test", "validation", "train"] = "test"
    """Split whose stores are scored; `test` reads EPIC_100_test_timestamps.csv (no labels)."""
    checkpoint: Literal["best", "last"] = "best"
    out: Path | None = None
    """Output .npz (default: <run>/predictions_<split>.npz)."""
    data: Path | None = None
    """Dataset folder, when not the run's (e.g. the run was trained on another machine)."""
    failed: Literal["auto", "exclude", "refuse", "prior"] = "auto"
    """Rows that failed extraction: left out and counted, refused, or scored with the train
    split's class prior and counted (auto: refused on test, where a submission needs every
    segment; left out elsewhere, as training does)."""
    video_store: str | None = None
    """Read this video store of the split instead of the run's (e.g. `vitl-anticipation`:
    a recognition run on the observed windows); only its clip window may differ."""
    text_store: str | None = None
    """Read this text store of the split instead of the run's (e.g. questions written from
    predictions on the unlabelled test split); only its questions' generator may differ."""
    device: str = "auto"


def run_config(folder: Path) -> TrainConfig:
    """The `TrainConfig` the run was trained with: its `config.json`, checked against
    `fingerprint.json` (they are written together; a mismatch means one was edited)."""
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such run folder; pass --run the folder "
                             "fusion.train printed (runs/<fusion>-<backbone>-<task>...-s<seed>)")
    path = folder / "config.json"
    if not path.exists():
        raise RunFolderError(f"{path}: not found, so {folder} is not a fusion.train run folder "
                             "(or it never started); pass --run the folder fusion.train printed")
    try:
        saved = json.loads(path.read_text())
        head = HeadConfig(**saved.pop("head", {}))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise RunFolderError(f"{path}: fields {unknown} unknown to this fusion.train; "
                                 "predict with the harness version that trained the run")
        for name in ("data", "out"):
            if name in saved:
                saved[name] = Path(saved[name])
        saved["tags"] = tuple(saved.get("tags", ()))
        config = dataclasses.replace(TrainConfig(), head=head, **saved)
    except (ValueError, TypeError, AttributeError) as error:
        raise RunFolderError(f"{path}: unreadable ({errors.one_line(error)[:200]}); it is "
                             "written by fusion.train: restore it or retrain the run") from None
    record = folder / FINGERPRINT_FILE
    if record.exists():
        try:
            changed = setting_changes(json.loads(record.read_text())["fields"],
                               fingerprint(to_dict(config)))
        except (ValueError, KeyError, TypeError) as error:
            raise RunFolderError(f"{record}: unreadable ({errors.one_line(error)[:200]}); "
                                 "restore it or retrain the run") from None
        if changed:
            note = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in list(changed.items())[:5])
            raise RunFolderError(f"{path} and {record} disagree ({note}): one was edited by "
                                 "hand; restore it, or retrain the run")
    return config


def _check_segments(stores: dict[str, FeatureStore], ids: np.ndarray, annotations: Path,
                    complete: bool) -> None:
    """Store rows must be segments of the split's annotation file; with `complete` (a
    submission) every segment of the file must have a row."""
    wanted = load_segments(annotations)["narration_id"].astype(str).to_numpy()
    store = next(iter(stores.values())).path
    extra = np.setdiff1d(ids.astype(str), wanted)
    if len(extra):
        raise StoreError(f"{store}: {len(extra)} row(s) not in {annotations} (first "
                         f"{extra[0]!r}); extract from the same annotation folder")
    missing = np.setdiff1d(wanted, ids.astype(str))
    if complete and len(missing):
        raise StoreError(
            f"{store}: {len(missing)} of {len(wanted)} segments of {annotations} have no row "
            f"(first {missing[0]!r}; a --limit extraction?); a submission needs all: extract "
            "the whole split, or pass --failed exclude for partial predictions")


def _refuse_failed(stores: dict[str, FeatureStore], split: str) -> None:
    """A `StoreError` naming the first store with failed rows and what to do."""
    for store in stores.values():
        failures = store.failures()
        if failures:
            first, why = next(iter(failures.items()))
            report = failure_report_path(store.path)
            raise StoreError(
                f"{store.path}: {len(failures)} row(s) failed extraction (first {first}: "
                f"{errors.one_line(why)[:120]}; all in {report}); a {split} submission needs "
                "every segment: restore the videos and rerun the extraction with "
                "--retry-failed, or pass --failed exclude to predict without them")


def load_unlabelled(config: TrainConfig, split: str, device: torch.device, failed: str
                    ) -> tuple[FeatureSplit | StreamedSplit, dict[str, FeatureStore]]:
    """One split's features in store order, labels -1 (none are read): the rows training
    would use (`exclude`, `prior`: every segment must have a row), or all rows with every one
    valid (`refuse`)."""
    try:
        stores = open_stores(config, split)
    except StoreError as error:  # its hint names a training flag; here the run fixes names
        message = str(error)
        for kind in ("video", "text"):
            message = message.replace(f" (or pass --{kind}-store NAME)",
                                      " (its name comes from the run's config.json)")
        raise StoreError(message) from None
    ids = check_aligned(*stores.values())
    if failed == "refuse":
        _refuse_failed(stores, split)
    _check_segments(stores, ids, split_path(config.data / "annotations", split),
                    complete=failed in ("refuse", "prior"))
    keep = kept_rows(stores, split)
    narration_ids = [str(i) for i in ids[keep]]
    unknown = torch.full((len(keep),), -1, dtype=torch.int64)
    features = split_features(config, split, stores, keep, narration_ids, unknown, unknown,
                              device)
    return features, stores


OVERRIDE_MAY_DIFFER = {"video": (("clip", "task"), ("clip", "observed_s"), ("clip", "gap_s")),
                       "text": (("generator",),)}
"""Manifest fields a `--video-store` / `--text-store` override may change: what it is for."""


def _without(store: FeatureStore, fields: tuple[tuple[str, ...], ...]) -> Any:
    """`store` as `check_compatible` reads it (path, arrays, manifest) minus `fields`."""
    manifest = copy.deepcopy(dict(store.manifest))
    for path in fields:
        parent = manifest
        for key in path[:-1]:
            parent = parent.get(key, {})
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return SimpleNamespace(path=store.path, arrays=store.arrays, manifest=manifest)


def _check_trained_on(config: TrainConfig, stores: dict[str, FeatureStore], split: str,
                      overridden: tuple[str, ...] = ()) -> None:
    """Refuse features of another extractor than the run's training stores (when those are
    here: a run moved to another machine may bring only the split it predicts); an
    `overridden` kind's store may differ in `OVERRIDE_MAY_DIFFER` only."""
    if split == config.train_split and not overridden:
        return
    try:
        trained = open_stores(config, config.train_split)
    except StoreError:
        print(f"note: no {config.train_split} stores under {config.data / 'features'}: the "
              f"{split} features are not checked against the ones the run trained on",
              file=sys.stderr)
        return
    if overridden:
        trained = {k: _without(v, OVERRIDE_MAY_DIFFER[k] if k in overridden else ())
                   for k, v in trained.items()}
        stores = {k: _without(v, OVERRIDE_MAY_DIFFER[k] if k in overridden else ())
                  for k, v in stores.items()}
    try:
        check_compatible(trained, stores)
    except StoreError as error:
        reason = errors.one_line(error).replace("train and validation", f"train and {split}")
        raise StoreError(f"the {split} features differ from those the run trained on: "
                         f"{reason}") from None
    for kind in overridden:
        fields = ", ".join(".".join(f) for f in OVERRIDE_MAY_DIFFER[kind])
        print(f"note: {split} {kind} features from {stores[kind].path}, not the run's store; "
              f"they match its training store but for {fields}", file=sys.stderr)


def load_model(config: TrainConfig, folder: Path, which: str, dims: dict[str, int],
               device: torch.device) -> torch.nn.Module:
    """The head as `fusion.train.build_training` builds it, with the checkpoint's weights."""
    path = folder / f"{which}.pt"
    if not path.exists():
        raise RunFolderError(f"{path}: not found; the run has not finished an epoch (train it: "
                             "rerun its fusion.train command)"
                             + ("" if which == "last" else ", or pass --checkpoint last"))
    checkpoint = load_checkpoint(path, device)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise RunFolderError(f"{path}: not a fusion.train checkpoint (no model weights); "
                             "retrain the run")
    annotations = config.data / "annotations"
    num_verbs = len(load_classes(annotations / "EPIC_100_verb_classes.csv"))
    num_nouns = len(load_classes(annotations / "EPIC_100_noun_classes.csv"))
    name, options = head_choice(config)
    try:
        model = build_head(name, modality_dims=dims, num_verbs=num_verbs, num_nouns=num_nouns,
                           **options).to(device)
    except TypeError as error:
        raise HeadConfigError(f"fusion head {name!r} rejects the head options {options}: "
                              f"{error}") from error
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise RunFolderError(f"{path}: does not fit the head built from {folder / 'config.json'}"
                             f" and these stores ({errors.one_line(error)[:300]}); predict "
                             "from the features and class files the run trained on") from None
    return model


def class_prior(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Log class frequencies (add-one) of the run's train split: verb and noun scores of a
    segment the model cannot see (`--failed prior`)."""
    annotations = config.data / "annotations"
    segments = load_split(annotations, config.train_split).segments
    priors = []
    for name in ("verb", "noun"):
        count = len(load_classes(annotations / f"EPIC_100_{name}_classes.csv"))
        frequency = np.bincount(segments[f"{name}_class"].to_numpy(), minlength=count) + 1.0
        priors.append(np.log(frequency / frequency.sum()).astype(np.float32))
    return priors[0], priors[1]


def with_prior(config: TrainConfig, stores: dict[str, FeatureStore], split: str,
               ids: list[str], scores: dict[str, np.ndarray]
               ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every row of the stores: the model's scores where it had features, the train split's
    class prior where extraction failed (counted on stderr)."""
    every = [str(i) for i in check_aligned(*stores.values())]
    if len(every) == len(ids):
        return ids, scores
    verb_prior, noun_prior = class_prior(config)
    row = {narration_id: i for i, narration_id in enumerate(ids)}
    out = {}
    for name, prior in (("verb", verb_prior), ("noun", noun_prior)):
        full = np.repeat(prior[None], len(every), axis=0)
        for i, narration_id in enumerate(every):
            if narration_id in row:
                full[i] = scores[name][row[narration_id]]
        out[name] = full
    print(f"{split}: {len(every) - len(ids)} of {len(every)} segments failed extraction and "
          f"score the {config.train_split} split's class prior (--failed prior)",
          file=sys.stderr)
    return every, out


def run_predict(config: PredictConfig) -> tuple[Path, int]:
    """Write the predictions file; returns its path and its number of segments."""
    device = errors.resolve_device(config.device)
    train_config = run_config(config.run)
    if config.data is not None:
        train_config = dataclasses.replace(train_config, data=config.data)
    overrides = {f"{kind}_store": name for kind, name in (("video", config.video_store),
                                                          ("text", config.text_store)) if name}
    split_config = dataclasses.replace(train_config, **overrides)
    failed = config.failed
    if failed == "auto":
        failed = "refuse" if config.split == "test" else "exclude"
    split, stores = load_unlabelled(split_config, config.split, device, failed)
    _check_trained_on(train_config, stores, config.split,
                      tuple(k.removesuffix("_store") for k in overrides))
    model = load_model(train_config, config.run, config.checkpoint, split.dims, device)
    amp = train_config.amp and device.type == "cuda"
    scores = predict(model, split, train_config.batch_size, amp, autocast_dtype(train_config))
    ids = list(split.narration_ids)
    if failed == "prior":
        ids, scores = with_prior(train_config, stores, config.split, ids, scores)
    out = config.out or config.run / f"predictions_{config.split}.npz"
    in_sample = config.split == train_config.train_split
    if in_sample:
        print(f"note: {config.run} was trained on the {config.split} split, so these "
              f"predictions are in-sample (the run trained on these clips, or, with "
              f"--video-store, on the {config.split} segments around them) and more accurate "
              "than on held-out clips; recorded as in_sample=true in the file (and in "
              "questions written from it)", file=sys.stderr)
    source = {"run": str(config.run), "checkpoint": config.checkpoint, "split": config.split,
              "trained_on": train_config.train_split, "in_sample": in_sample}
    save_predictions(out, ids, scores["verb"], scores["noun"], source=source)
    return out, len(ids)


def main(argv: list[str] | None = None) -> None:
    from features.config import cli

    config = cli(PredictConfig, args=argv)
    path, count = run_predict(config)
    print(f"wrote {path} ({count} {config.split} segments, {config.checkpoint}.pt)")


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
