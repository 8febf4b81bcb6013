"""Rebuild the paper's four tables from the MLflow store, ours beside the published values,
and an information-sources table (video alone, questions alone, both, the text probe).

    python -m reports.tables [--tracking-uri URI] [--experiment mambavl] [--select best|latest]
                             [--dataset ek100] [--out reports/out] [--html/--no-html]
                             [--audit AUDIT.json] [--mlflow-url http://127.0.0.1:5000]

Why this shape: a number in a table is only worth something if one can trace it. Every row
picks its run by tags (fusion, backbone, task, features, protocol), carries a numbered marker
linked to that run's MLflow page, prints the published value (MambaVL paper, arXiv
2409.11513) and the difference beside ours, and a legend under the table says what each
kind of empty cell means (the CSV keeps each cell's precise cause). Every caption names
the dataset and the protocol of the runs and says that ours are heads on frozen features,
so a synthetic-demo number never passes for EK100 and a frozen-feature head never passes
for the paper's fine-tuned model.
The information-sources table (`sources.*`) asks how much of a score the questions give
by themselves: they are written from the clip's own labels, so the Mamba head trained on the
questions alone, and a bag-of-words probe from `python -m extract.questions audit --json`
(read from `--audit`: a file the user names, never guessed), stand beside video alone and both.
Writes `tableN.{md,tex,csv}`, `sources.{md,tex,csv}`, `tables.md`, plots (`plots/`) and
`index.html` to `--out`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from features.errors import HarnessError, one_line
from fusion.metrics import HEADLINE_METRIC
from reports import paper

Select = Literal["best", "latest"]
VNA = ("verb", "noun", "action")
PAPER_BACKBONES = ("orvit", "vitb", "vitl")
HEADS = ("mlp", "transformer_6x4", "transformer_12x12", "mamba")
HEAD_NAMES = {"mlp": "MLP", "transformer_6x4": "Transformer 6×4",
              "transformer_12x12": "Transformer 12×12", "mamba": "MambaVL"}
BACKBONE_NAMES = {"orvit": "ORViT", "vitb": "AVION ViT-B", "vitl": "AVION ViT-L"}
PAPER_KEY = paper.PAPER_KEY
README_KEY = {**PAPER_KEY, "orvit": "orvit_motionformer"}
PROTOCOLS = ("authors", "paper", "clean")
"""fusion.train --protocol; a run that logged none ran before protocols existed: `clean`."""
FROZEN = ("Ours: fusion heads trained on frozen features (cached backbone outputs, the "
          "backbone is never updated); the published models fine-tune the backbone end to "
          "end, so Δ compares two different set-ups.")
BACKBONE_ALIAS = {"demo": "vit-demo"}  # the demo's feature store name -> registered encoder


# --------------------------------------------------------------------------- runs and picks


@dataclass(frozen=True)
class RunInfo:
    """The part of an MLflow run a table needs (final metric values, tags)."""

    run_id: str
    name: str
    start_time: int
    tags: Mapping[str, str]
    metrics: Mapping[str, float]
    params: Mapping[str, str] = field(default_factory=dict)
    experiment_id: str = ""

    @property
    def dataset(self) -> str:
        return self.tags.get("dataset", "unknown")

    @property
    def protocol(self) -> str:
        """The run's tag or param `protocol`; runs without one are `clean` (the default)."""
        return self.tags.get("protocol") or self.params.get("protocol") or "clean"


@dataclass(frozen=True)
class Missing:
    """An empty cell: rendered "—", explained once per table by its `legend` (or `reason`).

    `reason` is the precise cause (tags searched, file), kept for the CSV notes and the
    HTML tooltip; `legend` is the short sentence a reader of the paper needs.
    """

    reason: str
    legend: str = ""

    @property
    def short(self) -> str:
        return self.legend or self.reason


NOT_RUN = "ours: no run with this set-up yet"


@dataclass(frozen=True)
class Query:
    """Tags a row's run must carry; `None` accepts any head (backbone-alone rows) or protocol."""

    task: str
    backbone: str
    features: str = "video+questions"
    fusion: str | None = None
    protocol: str | None = None

    def matches(self, run: RunInfo) -> bool:
        tags = run.tags
        return (tags.get("task") == self.task and tags.get("backbone") == self.backbone
                and tags.get("features") == self.features
                and (self.fusion is None or tags.get("fusion") == self.fusion)
                and (self.protocol is None or run.protocol == self.protocol))

    def describe(self) -> str:
        fusion = f"fusion={self.fusion}, " if self.fusion else ""
        protocol = f", protocol={self.protocol}" if self.protocol else ""
        return (f"{fusion}backbone={self.backbone}, task={self.task}, "
                f"features={self.features}{protocol}")

    def protocols(self, runs: Sequence[RunInfo], dataset: str | None) -> list[str | None]:
        """The protocols of the runs this query matches (known ones first), or [None]."""
        found = {r.protocol for r in runs
                 if self.matches(r) and (dataset is None or r.dataset == dataset)}
        ordered = [p for p in PROTOCOLS if p in found] + sorted(found - set(PROTOCOLS))
        return list(ordered) or [None]


@dataclass(frozen=True)
class Pick:
    """The run chosen for a row, out of `candidates`, or why there is none."""

    run: RunInfo | None
    candidates: int
    mode: Select
    reason: str = ""
    legend: str = NOT_RUN

    def missing(self) -> Missing:
        """The empty cell of a row without a run."""
        return Missing(self.reason, self.legend)

    def selection(self) -> str:
        """How the run was chosen, in words: `best of 3; sweep demo trial 2`."""
        assert self.run is not None
        study = self.run.tags.get("optuna.study")
        sweep = f"; sweep {study} trial {self.run.tags.get('optuna.trial', '?')}" if study else ""
        return f"{self.mode} of {self.candidates}{sweep}"

    def cell(self) -> str | Missing:
        if self.run is None:
            return self.missing()
        return f"{self.run.run_id} ({self.selection()})"


def select(runs: Sequence[RunInfo], query: Query, metric: str, mode: Select,
           dataset: str | None = None) -> Pick:
    """Best run by the validation `best_<metric>`, or the latest; ties go to the latest."""
    tagged = [r for r in runs if query.matches(r) and (dataset is None or r.dataset == dataset)]
    where = f"tagged {query.describe()}" + (f", dataset={dataset}" if dataset else "")
    if not tagged:
        return Pick(None, 0, mode, f"no finished run {where}")
    usable = [r for r in tagged if f"best_{metric}" in r.metrics]
    if not usable:
        return Pick(None, 0, mode, f"{len(tagged)} run(s) {where} but none logged best_{metric}",
                    "runs of ours with this set-up logged no validation score")
    def key(run: RunInfo) -> tuple[float, int]:
        return (run.metrics[f"best_{metric}"] if mode == "best" else 0.0, run.start_time)

    return Pick(max(usable, key=key), len(usable), mode)


def load_runs(tracking_uri: str, experiment: str) -> tuple[list[RunInfo], str]:
    """Finished training runs of `experiment` (sweep parents and pruned trials left out), or
    a problem note.

    Sweep parents (tag sweep=true, or any run that has child runs) summarise their trials;
    the trials themselves are ordinary training runs and compete like any other.
    """
    path = tracking_uri.removeprefix("sqlite:///")
    if tracking_uri.startswith("sqlite:///") and not Path(path).exists():
        return [], f"no tracking store at {tracking_uri} (nothing has been trained yet)"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [], f"no experiment {experiment!r} in {tracking_uri}"
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}  # of any status
    infos = [RunInfo(r.info.run_id, r.info.run_name or "", r.info.start_time or 0,
                     dict(r.data.tags), dict(r.data.metrics), dict(r.data.params),
                     r.info.experiment_id)
             for r in runs if r.info.status == "FINISHED" and "task" in r.data.tags
             and r.data.tags.get("sweep") != "true" and r.info.run_id not in parents
             and r.data.tags.get("pruned") != "true"]  # pruned trials end FINISHED
    if not infos:
        return [], f"no finished training run in experiment {experiment!r} at {tracking_uri}"
    return infos, ""


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """A table column; `group` spans a header over neighbours (verb top-1: ours, pub., Δ);
    `hidden` columns are kept for the CSV only (tags, dataset, run id: the caption, the
    legend and the run notes carry them for a reader)."""

    key: str
    header: str
    fmt: Literal["text", "pct", "delta", "num"] = "text"
    group: str = ""
    hidden: bool = False


@dataclass
class Table:
    """Rows of plain values (float, str, Missing) plus the words that make them honest."""

    name: str
    title: str
    caption: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    picks: list[tuple[str, Pick]] = field(default_factory=list)
    """(row label, pick) pairs: the runs behind the table, for plots."""

    @property
    def shown(self) -> list[Column]:
        return [c for c in self.columns if not c.hidden]

    def legend(self) -> list[str]:
        """What an empty ("—") shown cell means, each meaning once, in order of appearance."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for col in self.shown:
                value = row.get(col.key)
                if isinstance(value, Missing):
                    seen.setdefault(value.short)
        return list(seen)

    def runs(self) -> list[RunNote]:
        """One numbered note per row that has a run (its footnote marker), in row order."""
        notes: list[RunNote] = []
        for i, row in enumerate(self.rows):
            pick = row.get("_pick")
            if isinstance(pick, Pick) and pick.run is not None:
                notes.append(RunNote(len(notes) + 1, pick, i))
        return notes


@dataclass(frozen=True)
class RunNote:
    """A row's footnote: the run behind it and how it was chosen."""

    number: int
    pick: Pick
    row: int

    @property
    def run(self) -> RunInfo:
        assert self.pick.run is not None
        return self.pick.run

    def url(self, mlflow_url: str) -> str:
        """The run's page in the MLflow UI (`mlflow ui` serves it at `mlflow_url`)."""
        return (f"{mlflow_url.rstrip('/')}/#/experiments/{self.run.experiment_id or '0'}"
                f"/runs/{self.run.run_id}")

    def text(self) -> str:
        """`run 0123abcd (best of 3), protocol clean, synthetic-demo`."""
        return (f"run {self.run.run_id[:8]} ({self.pick.selection()}), protocol "
                f"{self.run.protocol}, dataset {self.run.dataset}.")


DEFAULT_MLFLOW_URL = "http://127.0.0.1:5000"
"""Where `mlflow ui` (make mlflow-ui) serves by default; run links point there."""


def fmt(value: Any, kind: str) -> str:
    """A cell as text: % and Δ with one decimal, "—" for an empty cell (see the legend)."""
    if isinstance(value, Missing):
        return "—"
    if value is None:
        return ""
    if kind == "pct" or (kind == "num" and abs(value) >= 10):
        return f"{value:.1f}"
    if kind == "num":
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2g}"
    if kind == "delta":
        return f"{value:+.1f}".replace("-", "−")
    return str(value)


def datasets_line(picks: Iterable[Pick], dataset_filter: str | None) -> str:
    """The caption's dataset sentence: what the runs in this table were trained on."""
    used = sorted({p.run.dataset for p in picks if p.run is not None})
    if not used:
        return "Dataset: none (no runs)" + (f"; filter dataset={dataset_filter}."
                                            if dataset_filter else ".")
    text = f"Dataset of our runs: {', '.join(used)}"
    if any(d != "ek100" for d in used):
        text += " — NOT EK100: these numbers are not comparable with the published ones"
    if len(used) > 1:
        text += " (mixed datasets; each run note names its own)"
    return text + "."


def protocols_line(picks: Iterable[Pick]) -> str:
    """The caption's protocol sentence, and the frozen-features warning."""
    used = {p.run.protocol for p in picks if p.run is not None}
    ordered = [p for p in PROTOCOLS if p in used] + sorted(used - set(PROTOCOLS))
    text = (f"Protocol of our runs: {', '.join(ordered)} (runs without one: clean)."
            if ordered else "Protocol: none (no runs).")
    return f"{text} {FROZEN}"


def weights_line(picks: Iterable[Pick]) -> str:
    """Says so when a run's video features came from a random-init backbone (`--random-init`)."""
    random = sorted({p.run.name for p in picks
                     if p.run is not None and p.run.tags.get("backbone_weights") == "random-init"})
    if not random:
        return ""
    return (f" Random-init backbone: {len(random)} of our runs read features of a backbone with "
            "random weights (no checkpoint), which carry almost no label information.")


def _caption_tail(table: Table, dataset: str | None) -> str:
    picks = [p for _, p in table.picks]
    return f"{protocols_line(picks)} {datasets_line(picks, dataset)}{weights_line(picks)}"


NO_COUNTERPART = "another method: published value shown for reference, not run here"
OTHER_METHOD = Missing(NO_COUNTERPART, "ours: another method, published value only")


def _published(task: str, backbone: str, method: str
               ) -> tuple[dict[str, float | None], str | Missing]:
    """Published values of a Table 1/2 row: the paper's, else the authors' README's."""
    key = PAPER_KEY.get(backbone)
    if task == "recognition" and (key, method) in paper.TABLE1_ROWS:
        row = paper.TABLE1_ROWS[(key, method)]
        return row.vna(), row.source
    if task == "anticipation":
        readme = paper.README_MODEL_ZOO.get((README_KEY.get(backbone), method, task))
        if readme:
            return dict(readme), "authors' README (not the paper)"
        return {}, Missing(paper.TABLE2_MISSING, "published: the paper's Table 2 values are "
                           "not in the paper text we have")
    return {}, Missing(f"the paper reports no {_name(backbone)} row for this method",
                       "published: the paper reports no row for this backbone")


def _ours_vs_published(row: dict[str, Any], pick: Pick | None, metrics: Sequence[str],
                       published: Mapping[str, float | None], source: str | Missing) -> None:
    """Fill `<m>`, `<m>_pub`, `<m>_diff` (all in %) for each of `metrics` ('verb_top1'…).

    `pick=None` is a published-only row (a method this harness does not run).
    """
    no_pub = source if isinstance(source, Missing) else Missing(
        f"{source} gives no value for this cell", "published: no value in the source")
    for metric in metrics:
        head = metric.split("_")[0]
        if pick is None:
            ours: float | Missing = OTHER_METHOD
        elif pick.run is None:
            ours = pick.missing()
        else:
            value = pick.run.metrics.get(f"best_{metric}")
            ours = (Missing(f"run logged no best_{metric}", "ours: the run logged no such score")
                    if value is None else 100 * value)
        pub = published.get(head)
        row[metric] = ours
        row[f"{metric}_pub"] = no_pub if pub is None else pub
        # an empty difference repeats the cause of the empty side (no extra footnote)
        row[f"{metric}_diff"] = (ours if isinstance(ours, Missing) else
                                 no_pub if pub is None else ours - pub)
    row["source"] = source


def _metric_columns(metrics: Sequence[str], label: str) -> list[Column]:
    """Per metric a group `verb top-1` of three columns: ours, published, Δ."""
    cols = []
    for m in metrics:
        group = f"{m.split('_')[0]} {label}"
        cols += [Column(m, "ours", "pct", group), Column(f"{m}_pub", "pub.", "pct", group),
                 Column(f"{m}_diff", "Δ", "delta", group)]
    return cols


def _hidden(*keys: str) -> list[Column]:
    """CSV-only columns (the run cells, tags and sources)."""
    return [Column(k, k, hidden=True) for k in keys]


def _backbones(runs: Sequence[RunInfo], task: str, first: Sequence[str]) -> list[str]:
    found = sorted({r.tags.get("backbone", "") for r in runs if r.tags.get("task") == task})
    return list(first) + [b for b in found if b and b not in first]


def _name(backbone: str) -> str:
    return BACKBONE_NAMES.get(backbone, backbone)


def _run_cells(row: dict[str, Any], pick: Pick) -> None:
    """The protocol, dataset and run columns of a row from its pick (or why it has none)."""
    row["protocol"] = pick.run.protocol if pick.run else pick.missing()
    row["dataset"] = pick.run.dataset if pick.run else pick.missing()
    row["run"] = pick.cell()
    row["_pick"] = pick


def _label(base: str, pick: Pick) -> str:
    return f"{base}, {pick.run.protocol}" if pick.run is not None else base


def _other_row(table: Table, published: paper.Published, metrics: Sequence[str]) -> None:
    """A published-only row (MeMViT, Omnivore, LaViLa): the paper's value, no run of ours."""
    row: dict[str, Any] = {"backbone": published.row, "method": "(published only)",
                           "model": published.row, "head": OTHER_METHOD}
    _ours_vs_published(row, None, metrics, published.vna(), published.source)
    row.update(protocol=None, dataset=OTHER_METHOD, run=OTHER_METHOD)
    table.rows.append(row)


def _accuracy_table(name: str, title: str, task: str, metrics: Sequence[str], label: str,
                    backbones: Sequence[str], runs: Sequence[RunInfo],
                    mode: Select, dataset: str | None) -> Table:
    """Tables 1 and 2: per backbone, alone (video features, any head) and with MambaVL, one
    row per protocol found among the matching runs; Table 1 adds the paper's other methods."""
    cols = [Column("model", "model"), Column("protocol", "protocol"),
            *_metric_columns(metrics, label),
            *_hidden("backbone", "method", "head", "source", "dataset", "run")]
    table = Table(name, title, "", cols)
    if task == "recognition":
        for other in paper.TABLE1_OTHERS:
            _other_row(table, other, metrics)
    for backbone in backbones:
        for method, query in (
            ("backbone", Query(task, backbone, features="video")),
            ("lavila", None),
            ("mambavl", Query(task, backbone, fusion="mamba")),
        ):
            if query is None:  # LaViLa of the same size, published only
                lavila = paper.TABLE1_ROWS.get((PAPER_KEY.get(backbone, ""), method))
                if task == "recognition" and lavila is not None:
                    _other_row(table, lavila, metrics)
                continue
            published, source = _published(task, backbone, method)
            for protocol in query.protocols(runs, dataset):
                pick = select(runs, replace(query, protocol=protocol), HEADLINE_METRIC[task],
                              mode, dataset)
                base = _name(backbone) if method == "backbone" else f"{_name(backbone)} + MambaVL"
                row: dict[str, Any] = {"backbone": _name(backbone),
                                       "method": "alone" if method == "backbone" else "+ MambaVL"}
                row["head"] = pick.run.tags.get("fusion", "?") if pick.run else pick.missing()
                family = head_family(row["head"]) if pick.run else ""
                # the Mamba head on video alone is not MambaVL (no questions to fuse)
                head = "Mamba" if family == "mamba" else HEAD_NAMES.get(family, family)
                row["model"] = (f"{_name(backbone)} alone" + (f" ({head} head)" if head else "")
                                if method == "backbone" else base)
                _ours_vs_published(row, pick, metrics, published, source)
                _run_cells(row, pick)
                table.rows.append(row)
                table.picks.append((_label(base, pick), pick))
    return table


def table1(runs: Sequence[RunInfo], mode: Select, dataset: str | None = None) -> Table:
    backbones = _backbones(runs, "recognition", PAPER_BACKBONES)
    table = _accuracy_table("table1", "Table 1 — EK100 action recognition, top-1 (%)",
                            "recognition", [f"{h}_top1" for h in VNA], "top-1",
                            backbones, runs, mode, dataset)
    table.caption = (
        f"Validation top-1 accuracy (%) per backbone: the backbone alone (a head on the video "
        f"features only) and with MambaVL (the Mamba head on video and questions); published "
        f"values (pub.) from the MambaVL paper, Table 1, with its other methods. "
        f"{_picked(mode)} Δ = ours − pub. {_caption_tail(table, dataset)}")
    return table


def table2(runs: Sequence[RunInfo], mode: Select, dataset: str | None = None) -> Table:
    backbones = _backbones(runs, "anticipation", ("orvit",))
    table = _accuracy_table("table2", "Table 2 — EK100 action anticipation, class-mean recall@5 "
                            "(%)", "anticipation", [f"{h}_recall5" for h in VNA], "recall@5",
                            backbones, runs, mode, dataset)
    table.caption = (
        f"Validation class-mean recall@5 (%) for action anticipation. {_picked(mode)} "
        f"Δ = ours − pub. The paper's Table 2 values are not in the paper text we have; the "
        f"ORViT + MambaVL row is compared with the authors' README, which labels its "
        f"anticipation columns top-1, so its metric may differ. {_caption_tail(table, dataset)}")
    return table


def head_family(fusion: str) -> str:
    """The Table 3 head a fusion name stands for (`mlp_authors` -> `mlp`)."""
    return fusion.replace("_authors", "").replace("authors_", "")


def table3(runs: Sequence[RunInfo], mode: Select, dataset: str | None = None,
           backbones: Sequence[str] | None = None) -> Table:
    """Fusion ablation: every head on the same features, recognition top-1."""
    if backbones is None:
        backbones = [paper.TABLE3_BACKBONE] + [
            b for b in _backbones(runs, "recognition", PAPER_BACKBONES)
            if b != paper.TABLE3_BACKBONE and any(Query("recognition", b).matches(r)
                                                  for r in runs)]
    metrics = [f"{h}_top1" for h in VNA]
    cols = [Column("backbone", "backbone"), Column("head", "fusion head"),
            Column("protocol", "protocol"), *_metric_columns(metrics, "top-1"),
            Column("params_m", "params (M)", "num", "head cost"),
            Column("gflops", "GFLOPs", "num", "head cost"), *_hidden("source", "dataset", "run")]
    table = Table("table3", "Table 3 — fusion ablation, action recognition top-1 (%)", "", cols)
    found = sorted({r.tags.get("fusion", "") for r in runs if r.tags.get("task") == "recognition"
                    and head_family(r.tags.get("fusion", "")) in HEADS} - set(HEADS))
    heads = sorted([*HEADS, *found], key=lambda h: (HEADS.index(head_family(h)), h))
    for backbone in backbones:
        for head in heads:
            family = head_family(head)
            name = HEAD_NAMES[family] + ("" if head == family else f" [{head}]")
            query = Query("recognition", backbone, fusion=head)
            if backbone == paper.TABLE3_BACKBONE:
                published = paper.TABLE3.get("mambavl" if family == "mamba" else family, {})
                source: str | Missing = "MambaVL paper, Table 3"
            else:
                published, source = {}, Missing("the paper's Table 3 is on ORViT features only",
                                                "published: the paper's ablation is on ORViT "
                                                "features only")
            for protocol in query.protocols(runs, dataset):
                pick = select(runs, replace(query, protocol=protocol), "action_top1", mode,
                              dataset)
                row: dict[str, Any] = {"backbone": _name(backbone), "head": name}
                _ours_vs_published(row, pick, metrics, published, source)
                _head_cost(row, pick)
                _run_cells(row, pick)
                table.rows.append(row)
                table.picks.append((_label(f"{name} ({_name(backbone)})", pick), pick))
    table.caption = (
        f"Fusion heads on the same video and question features; backbone(s): "
        f"{', '.join(_name(b) for b in backbones)}. The paper's ablation (Table 3) ran on "
        f"ORViT features, so its values stand beside the ORViT rows only. Head cost: "
        f"parameters (M) and GFLOPs per clip of the trained head at its input shapes. "
        f"{_picked(mode)} Δ = ours − pub. {_caption_tail(table, dataset)}")
    return table


def _head_cost(row: dict[str, Any], pick: Pick) -> None:
    for key, metric, scale in (("params_m", "params", 1e6), ("gflops", "flops", 1e9)):
        value = pick.run.metrics.get(metric) if pick.run else None
        row[key] = (value / scale if value is not None else pick.missing() if pick.run is None
                    else Missing(f"run logged no {metric}", "ours: the run logged no head cost"))


BackboneCost = Callable[[str], "tuple[float | Missing, float | Missing, str]"]


def backbone_cost(backbone: str) -> tuple[float | Missing, float | Missing, str]:
    """(params, FLOPs per clip, source) of a backbone: counted, else the paper's, else why not."""
    from extract.backbones import describe_backbone, list_backbones

    name = BACKBONE_ALIAS.get(backbone, backbone)
    if name in list_backbones():
        d = describe_backbone(name)
        alias = f" as {name}" if name != backbone else ""
        return (float(d["params"]), float(d["flops_per_clip"]),
                f"counted by us{alias} on a {d['num_frames']}×{d['image_size']}² clip")
    published = paper.TABLE4.get(backbone, {})
    if published.get("params_m") is not None:
        flops = (published["gflops"] * 1e9 if published.get("gflops") is not None else
                 Missing(f"{_name(backbone)} GFLOPs: not counted here and not published",
                         "ours: backbone cost neither counted nor published"))
        return published["params_m"] * 1e6, flops, f"from the {paper.TABLE4_SOURCE}"
    why = Missing(f"backbone {backbone!r}: cost neither counted here nor published",
                  "ours: backbone cost neither counted nor published")
    return why, why, ""


def table4(runs: Sequence[RunInfo], mode: Select, dataset: str | None = None,
           cost: BackboneCost = backbone_cost) -> Table:
    """GFLOPs and parameters: backbone alone, + Transformer 12×12 fusion, + MambaVL."""
    cols = [Column("backbone", "backbone"), Column("model", "model"),
            Column("protocol", "protocol"),
            *(Column(f"{short}{suffix}", header, fmt, group)
              for short, group in (("params", "parameters (M)"), ("gflops", "GFLOPs per clip"))
              for suffix, header, fmt in (("_m" if short == "params" else "", "ours", "num"),
                                          ("_pub", "pub.", "num"), ("_diff", "Δ", "delta"))),
            Column("head_params_m", "head params (M)", "num"),
            *_hidden("cost_source", "dataset", "run")]
    table = Table("table4", "Table 4 — parameters and GFLOPs per clip", "", cols)
    for backbone in _backbones(runs, "recognition", PAPER_BACKBONES):
        params, flops, source = cost(backbone)
        key = PAPER_KEY.get(backbone, backbone)
        for model, fusion, pub_key in (("backbone alone", None, backbone),
                                       ("+ Transformer 12×12 fusion", "transformer_12x12",
                                        f"{backbone}+transformer_fusion"),
                                       ("+ MambaVL", "mamba", f"{backbone}+mambavl")):
            published = paper.TABLE4.get(pub_key, {}) if key == "orvit" else {}
            if fusion is None:
                alone = Missing("backbone alone: cost counted or published, no run involved",
                                "backbone alone: no run involved")
                entries: list[tuple[Pick | None, float | Missing, float | Missing]] = [
                    (None, 0.0, 0.0)]
            else:
                query = Query("recognition", backbone, fusion=fusion)
                entries = []
                for protocol in query.protocols(runs, dataset):
                    pick = select(runs, replace(query, protocol=protocol), "action_top1",
                                  mode, dataset)
                    cost_row: dict[str, Any] = {}
                    _head_cost(cost_row, pick)
                    entries.append((pick, cost_row["params_m"], cost_row["gflops"]))
            for pick, head_p, head_f in entries:
                row: dict[str, Any] = {"backbone": _name(backbone), "model": model,
                                       "cost_source": source or params, "head_params_m": head_p}
                if pick is None:
                    row.update(protocol=None, dataset=alone, run=alone)
                else:
                    _run_cells(row, pick)
                    table.picks.append((_label(f"{model} ({_name(backbone)})", pick), pick))
                row["params_m"] = _add(params, 1e6, head_p)
                row["gflops"] = _add(flops, 1e9, head_f)
                for short in ("params", "gflops"):
                    pub = published.get("params_m" if short == "params" else "gflops")
                    row[f"{short}_pub"] = pub if pub is not None else Missing(
                        f"the paper's Table 4 gives no {short.replace('gflops', 'GFLOPs')} for "
                        f"{_name(backbone)}", "published: the paper's Table 4 is on ORViT only")
                    ours = row["params_m" if short == "params" else "gflops"]
                    row[f"{short}_diff"] = (ours if isinstance(ours, Missing) else
                                            row[f"{short}_pub"] if pub is None else ours - pub)
                table.rows.append(row)
    sources: dict[str, str] = {}
    for row in table.rows:
        if isinstance(row["cost_source"], str):
            sources.setdefault(row["backbone"], row["cost_source"])
    table.caption = (
        f"Parameters (M) and GFLOPs per clip (2 FLOPs per multiply-add) of backbone + head, "
        f"one row per protocol of the head runs. Backbone cost: "
        f"{'; '.join(f'{b} {how}' for b, how in sources.items()) or 'none'}. Head cost: the "
        f"trained head of the {_mode_words(mode)} recognition run with that head, at its input "
        f"shapes. Published: {paper.TABLE4_SOURCE} (ORViT only; the paper does not say which "
        f"Transformer its fusion row uses). {_caption_tail(table, dataset)}")
    return table


def _add(backbone: float | Missing, scale: float, head: float | Missing) -> float | Missing:
    if isinstance(backbone, Missing):
        return backbone
    if isinstance(head, Missing):
        return head
    return backbone / scale + head


def _mode_words(mode: Select) -> str:
    return ("best (highest validation action top-1; action recall@5 for anticipation)"
            if mode == "best" else "latest finished")


def _picked(mode: Select) -> str:
    """The caption's sentence on how a row's run was chosen and where its marker leads."""
    return (f"Each row of ours is the {_mode_words(mode)} run with that set-up and protocol; "
            f"its numbered marker leads to the run in MLflow.")


# --------------------------------------------------------------------------- sources


SOURCES = (("video alone", "video"), ("questions alone", "questions"),
           ("video + questions", "video+questions"))
"""The information-sources rows: label and the runs' `features` tag (fusion.train
`--questions none`, `--video none`, both)."""
AUDIT_COMMAND = ("python -m extract.questions audit --train Q_TRAIN.jsonl --eval Q_EVAL.jsonl "
                 "--annotations DIR --json > AUDIT.json")
NO_AUDIT = f"no audit given: run `{AUDIT_COMMAND}` and pass --audit AUDIT.json"


class AuditFileError(HarnessError, ValueError):
    """An audit file the tables cannot use; the message names the file and what to do."""


def load_audit(path: Path) -> dict[str, Any]:
    """The JSON of `extract.questions audit --json`, checked: every probe key a fraction."""
    from extract.audit import PROBE_KEYS

    redo = f"write it with `{AUDIT_COMMAND.replace('AUDIT.json', str(path))}`"
    try:
        audit = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditFileError(f"{path}: no audit file; {redo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AuditFileError(f"{path}: not JSON ({one_line(error)}); {redo}") from None
    if not isinstance(audit, dict):
        raise AuditFileError(f"{path}: not a JSON object; {redo}")
    bad = [k for k in PROBE_KEYS if isinstance(audit.get(k), bool)
           or not isinstance(audit.get(k), int | float) or not 0 <= audit[k] <= 1]
    if bad:
        raise AuditFileError(f"{path}: no top-1 fraction (0..1) under {', '.join(bad)}; {redo}")
    return {**audit, "path": str(path)}


def _gain(both: float | Missing, other: float | Missing) -> float | Missing:
    """both − other; an empty side repeats its own reason (no extra footnote)."""
    if isinstance(both, Missing):
        return both
    return other if isinstance(other, Missing) else both - other


def sources_table(runs: Sequence[RunInfo], mode: Select, dataset: str | None = None,
                  audit: Mapping[str, Any] | None = None,
                  task: str = "recognition") -> Table:
    """What each information source gives the Mamba head: video alone, questions alone, both,
    with the gain of both over each, one block per backbone and protocol. Recognition adds
    the audit's text probe and majority class (its questions are written from the labels);
    anticipation's are written from the predictions of the observed window, so its
    questions-alone row measures what those predictions carry."""
    recognition = task == "recognition"
    metrics = [f"{h}_top1" if recognition else f"{h}_recall5" for h in VNA]
    unit = "top-1 (%)" if recognition else "class-mean recall@5 (%)"
    cols = [Column("backbone", "backbone"), Column("protocol", "protocol"),
            Column("source", "information"),
            *(Column(m, m.split("_")[0], "pct", unit) for m in metrics),
            *(Column(f"{m}_gain", m.split("_")[0], "delta", "both − this") for m in metrics),
            *_hidden("dataset", "run")]
    table = Table("sources" if recognition else "sources_anticipation",
                  "Information sources — what the video and the questions each give, "
                  + ("action recognition top-1 (%)" if recognition
                     else "action anticipation, class-mean recall@5 (%)"), "", cols)
    queries = [(label, Query(task, "", features=f, fusion="mamba")) for label, f in SOURCES]
    mamba = [r for r in runs if r.tags.get("fusion") == "mamba"
             and r.tags.get("features") in {f for _, f in SOURCES}]
    for backbone in _backbones(mamba, task, ()) or list(PAPER_BACKBONES):
        found = {p for _, q in queries
                 for p in replace(q, backbone=backbone).protocols(runs, dataset)}
        ordered = [p for p in PROTOCOLS if p in found] + sorted(
            p for p in found - set(PROTOCOLS) if p is not None) or [None]
        for protocol in ordered:
            block: list[dict[str, Any]] = []
            for label, query in queries:
                pick = select(runs, replace(query, backbone=backbone, protocol=protocol),
                              HEADLINE_METRIC[task], mode, dataset)
                row: dict[str, Any] = {"backbone": _name(backbone), "source": label}
                for m in metrics:
                    value = pick.run.metrics.get(f"best_{m}") if pick.run else None
                    row[m] = (100 * value if value is not None else pick.missing()
                              if pick.run is None else Missing(
                                  f"run logged no best_{m}", "the run logged no such score"))
                _run_cells(row, pick)
                block.append(row)
                table.picks.append((_label(f"{label} ({_name(backbone)})", pick), pick))
            if recognition:
                block += _audit_rows(backbone, metrics, audit)
            both = block[2]
            for row in block:
                for m in metrics:
                    row[f"{m}_gain"] = None if row is both else _gain(both[m], row[m])
            table.rows.extend(block)
    masks = sorted({p.run.params.get("question_mask", "") for _, p in table.picks
                    if p.run is not None and "questions" in p.run.tags.get("features", "")}
                   - {""})
    mask_line = f" Question mask of our runs: {', '.join(masks)}." if masks else ""
    if recognition:
        probe = (f"Text probe and majority class: not given (write them with "
                 f"`{AUDIT_COMMAND}` and pass --audit AUDIT.json)." if not audit
                 else f"Text probe and majority class from the audit {audit['path']}: a "
                 f"bag-of-words logistic regression from both questions to the label, trained "
                 f"on {audit.get('train', '?')} ({audit.get('train_pairs', '?')} pairs) and "
                 f"scored on {audit.get('eval', '?')} ({audit.get('eval_pairs', '?')} pairs); "
                 f"it predicts verb and noun separately, so it has no action score.")
        table.caption = (
            f"Validation top-1 (%) of the Mamba head on each information source: the video "
            f"alone, the questions alone and both; 'both − this' is the gain of both over the "
            f"row. The questions are written from the clip's own labels (paper §4.1), so a "
            f"questions-alone or probe score far above the majority class is label leakage, "
            f"not fusion. {probe}{mask_line} {_picked(mode)} {_caption_tail(table, dataset)}")
    else:
        table.caption = (
            f"Validation class-mean recall@5 (%) of the Mamba head anticipating the next "
            f"action from each information source: the observed video alone, the questions "
            f"alone and both; 'both − this' is the gain of both over the row. Anticipation "
            f"questions are written from a recognition model's predictions on the observed "
            f"window, never from the labels to anticipate, so the questions-alone row is what "
            f"those predictions carry.{mask_line} {_picked(mode)} "
            f"{_caption_tail(table, dataset)}")
    return table


def _audit_rows(backbone: str, metrics: Sequence[str],
                audit: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The audit's text probe and majority class as rows of a recognition sources block."""
    rows = []
    for label, keys in (("text probe (both questions)", ("probe_verb_top1",
                                                         "probe_noun_top1")),
                        ("majority class", ("majority_verb_top1", "majority_noun_top1"))):
        where = (Missing(f"from the audit {audit['path']}, not a training run",
                         "probe rows: from the question audit, not a training run")
                 if audit else Missing(NO_AUDIT, "no question audit given (--audit)"))
        row = {"backbone": _name(backbone), "source": label, "protocol": None,
               "dataset": where, "run": where}
        for m, key in zip(metrics, (*keys, None), strict=True):
            if not audit:
                row[m] = Missing(NO_AUDIT, "no question audit given (--audit)")
            elif key is None:
                row[m] = Missing("the audit scores verb and noun separately: no action",
                                 "the probe scores verb and noun separately: no action")
            else:
                row[m] = 100 * audit[key]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class Cell:
    """A shown cell: its text ("—" when empty), the empty cell's cause, the row's run note."""

    text: str
    numeric: bool
    missing: Missing | None = None
    note: RunNote | None = None


LABEL_KEYS = ("model", "head", "source")
"""The first of these among a table's shown columns carries the row's run marker."""


def groups(table: Table) -> list[tuple[str, int]]:
    """The grouped header over the shown columns: (label or "", span), left to right."""
    spans: list[tuple[str, int]] = []
    for col in table.shown:
        if spans and col.group and spans[-1][0] == col.group:
            spans[-1] = (col.group, spans[-1][1] + 1)
        else:
            spans.append((col.group, 1))
    return spans


def layout(table: Table) -> list[list[Cell]]:
    """The shown cells row by row, the same for Markdown, LaTeX and HTML: formatted values,
    a repeated backbone left blank (it heads its block), the run note on the row's label."""
    shown = table.shown
    label = next((c.key for c in shown if c.key in LABEL_KEYS), shown[0].key)
    notes = {n.row: n for n in table.runs()}
    rows, previous = [], None
    for i, row in enumerate(table.rows):
        cells = []
        for col in shown:
            value = row.get(col.key)
            text = fmt(value, col.fmt)
            if col.key == "backbone" and label != "backbone":
                text, previous = ("" if text == previous else text), text
            note = notes.get(i) if col.key == label else None
            cells.append(Cell(text, col.fmt != "text",
                              value if isinstance(value, Missing) else None, note))
        rows.append(cells)
    return rows


def legend_line(table: Table) -> str:
    """The one sentence that explains every "—" of the table."""
    legend = table.legend()
    return f"Empty cells (—): {'; '.join(legend)}." if legend else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: Table, mlflow_url: str = DEFAULT_MLFLOW_URL) -> str:
    """GitHub Markdown: grouped headers spelled `verb top-1: ours`, run markers linked."""
    shown = table.shown
    lines = [f"### {table.title}", "", table.caption, "",
             "| " + " | ".join(_md(f"{c.group}: {c.header}" if c.group else c.header)
                               for c in shown) + " |",
             "|" + "|".join("---:" if c.fmt != "text" else "---" for c in shown) + "|"]
    for cells in layout(table):
        texts = [_md(c.text) + (f" <sup>[{c.note.number}]({c.note.url(mlflow_url)})</sup>"
                                if c.note else "") for c in cells]
        lines.append("| " + " | ".join(texts) + " |")
    lines.append("")
    if legend_line(table):
        lines += [legend_line(table), ""]
    lines += [f"<sup>{n.number}</sup> [{_md(n.text())}]({n.url(mlflow_url)})  "
              for n in table.runs()]
    return "\n".join(lines).rstrip() + "\n"


_TEX = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "\\": r"\textbackslash{}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}",
        "<": r"\textless{}", ">": r"\textgreater{}", "—": "---", "–": "--", "−": "$-$",
        "×": r"$\times$", "Δ": r"$\Delta$", "²": r"\textsuperscript{2}", "§": r"\S{}",
        "·": r"$\cdot$", "…": r"\dots{}", "≥": r"$\geq$", "≤": r"$\leq$", "±": r"$\pm$",
        "’": "'", "‘": "`", "“": "``", "”": "''", "\n": " "}


def tex_escape(text: str) -> str:
    """Text as LaTeX source that pdflatex compiles with no package beyond booktabs: every
    special character escaped, every non-ASCII one spelled in ASCII (accents dropped)."""
    import unicodedata

    out = []
    for ch in text:
        if ch in _TEX:
            out.append(_TEX[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append(unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
                       or "?")
    return "".join(out)


def to_latex(table: Table) -> str:
    r"""A `table*` float for `\input` (booktabs; needs only `\usepackage{booktabs}`): grouped
    headers with `\cmidrule`, run markers as superscripts, the legend and the run notes
    (8-character ids) under the tabular."""
    shown = table.shown
    spec = "".join("r" if c.fmt != "text" else "l" for c in shown)
    out = [r"\begin{table*}[t]", r"\centering", r"\scriptsize",
           r"\caption{" + tex_escape(f"{table.title}. {table.caption}") + "}",
           r"\label{tab:" + table.name + "}", r"\begin{tabular}{" + spec + "}", r"\toprule"]
    spans = groups(table)
    if any(label for label, _ in spans):
        heads, rules, first = [], [], 1
        for label, span in spans:
            heads.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(label)}}}" if label
                         else " & ".join([""] * span))
            if label:
                rules.append(rf"\cmidrule(lr){{{first}-{first + span - 1}}}")
            first += span
        out += [" & ".join(heads) + r" \\", " ".join(rules)]
    out += [" & ".join(tex_escape(c.header) for c in shown) + r" \\", r"\midrule"]
    for cells in layout(table):
        out.append(" & ".join(tex_escape(c.text) + (rf"\textsuperscript{{{c.note.number}}}"
                                                     if c.note else "") for c in cells) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    below = [tex_escape(legend_line(table))] if legend_line(table) else []
    below += [rf"\textsuperscript{{{n.number}}}\," + tex_escape(n.text()) for n in table.runs()]
    if below:
        out += [r"\par\smallskip", r"\parbox{\linewidth}{\raggedright " + " ".join(below) + "}"]
    out.append(r"\end{table*}")
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """Raw numbers (in % / M / G), full run ids; empty cells' reasons in the `notes` column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.key for c in table.columns] + ["notes"])
    for row in table.rows:
        values, why = [], {}
        for c in table.columns:
            value = row.get(c.key)
            if isinstance(value, Missing):
                why.setdefault(value.reason, []).append(c.key)
                values.append("")
            elif isinstance(value, float):
                values.append(f"{value:.4f}")
            else:
                values.append("" if value is None else str(value))
        writer.writerow(values + ["; ".join(f"{','.join(keys)}: {reason}"
                                            for reason, keys in why.items())])
    return buffer.getvalue()


def build_tables(runs: Sequence[RunInfo], mode: Select, dataset: str | None = None,
                 cost: BackboneCost = backbone_cost,
                 audit: Mapping[str, Any] | None = None) -> list[Table]:
    """The paper's four tables, then the information-sources table (`audit`: its probe rows),
    and its anticipation twin when there are single-source anticipation runs."""
    tables = [table1(runs, mode, dataset), table2(runs, mode, dataset),
              table3(runs, mode, dataset), table4(runs, mode, dataset, cost),
              sources_table(runs, mode, dataset, audit)]
    if any(r.tags.get("task") == "anticipation" and r.tags.get("fusion") == "mamba"
           and r.tags.get("features") in {"video", "questions"} for r in runs):
        tables.append(sources_table(runs, mode, dataset, task="anticipation"))
    return tables


def write_tables(tables: Sequence[Table], out: Path, header: str = "",
                 mlflow_url: str = DEFAULT_MLFLOW_URL) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for suffix, text in ((".md", to_markdown(table, mlflow_url)), (".tex", to_latex(table)),
                             (".csv", to_csv(table))):
            path = out / f"{table.name}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    combined = out / "tables.md"
    combined.write_text(header + "\n".join(to_markdown(t, mlflow_url) for t in tables),
                        encoding="utf-8")
    return [*written, combined]


# --------------------------------------------------------------------------- CLI


@dataclass
class TablesConfig:
    """Write the paper's four tables and the information-sources table (Markdown, LaTeX,
    CSV), plots and an HTML page."""

    tracking_uri: str | None = None
    """Default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db."""
    experiment: str = "mambavl"
    select: Select = "best"
    """best: highest validation metric among matching runs; latest: most recent run."""
    dataset: str | None = None
    """Only runs tagged with this dataset (ek100, synthetic-demo); default: all."""
    out: Path = Path("reports/out")
    html: bool = True
    """Also render plots and the static `index.html`."""
    benchmark: Path = Path("benchmarks/results/fusion_heads.json")
    """Fusion benchmark results for the sequence-length scaling plot (skipped if absent)."""
    audit: Path | None = None
    """`python -m extract.questions audit ... --json` output: the text-probe and majority-class
    rows of the information-sources table (without it those cells say how to make one)."""
    mlflow_url: str = DEFAULT_MLFLOW_URL
    """The MLflow UI the run markers link to (`make mlflow-ui` serves the store there)."""


def main(args: Sequence[str] | None = None) -> list[Path]:
    from features.config import cli

    config = cli(TablesConfig, args=args)
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    audit = load_audit(config.audit) if config.audit else None  # bad file: one line, no work
    runs, problem = load_runs(uri, config.experiment)
    tables = build_tables(runs, config.select, config.dataset, audit=audit)
    header = (f"# MambaVL tables\n\nRuns: experiment `{config.experiment}` at `{uri}`, "
              f"selection `{config.select}`, {len(runs)} finished training run(s).\n\n")
    written = write_tables(tables, config.out, header, config.mlflow_url)
    if config.html:
        from reports.html import write_page
        from reports.plots import make_plots

        plots = make_plots(tables, uri, config.out / "plots", config.benchmark)
        written.append(write_page(tables, plots, config.out, uri, config.experiment,
                                  config.select, problem, config.mlflow_url))
    if problem:
        print(f"reports.tables: {problem}. Every cell is '—' with its reason; train runs first "
              f"(`make demo`, or `python -m fusion.train --preset ...`), or pass "
              f"--tracking-uri / --experiment.", file=sys.stderr)
    filled = sum(1 for t in tables for _, p in t.picks if p.run is not None)
    total = sum(len(t.picks) for t in tables)
    print(f"{len(runs)} run(s) in {uri} [{config.experiment}]: {filled}/{total} table rows "
          f"have a run; wrote {len(written)} files to {config.out}")
    if config.html:
        print(f"open {(config.out / 'index.html').resolve().as_uri()}")
    return written


if __name__ == "__main__":
    # run the imported module, not `__main__`, so html/plots share its classes (Missing)
    from features.errors import run_cli
    from reports.tables import main as _main

    sys.exit(run_cli(_main))
