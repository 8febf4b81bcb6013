"""Search spaces read from `spaces.yaml`: one readable file, one block per fusion head.

A space maps an Optuna parameter name to a distribution and to the `TrainConfig` field it
sets (`head.*` for `HeadConfig`). Keeping it in YAML rather than code means a user widens a
range without touching the sweep logic, and the file can sit next to the paper's values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml

if TYPE_CHECKING:
    from fusion.train import TrainConfig

DEFAULT_SPACES = Path(__file__).with_name("spaces.yaml")


@dataclass(frozen=True)
class ParamSpec:
    """One searched knob: its distribution and the config field it sets."""

    name: str
    type: str  # float | int | categorical
    field: str  # TrainConfig field, `head.<HeadConfig field>` for the head
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    times_epochs: bool = False
    """The sampled value is a fraction of the run's epochs (warmup scales with the budget)."""

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=self.step
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    """A head's searched parameters plus the authors' reference values for them."""

    fusion: str
    params: tuple[ParamSpec, ...]
    reference: dict[str, Any]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {spec.name: spec.suggest(trial) for spec in self.params}

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, logged with the sweep so a changed file is visible later."""
        return {spec.name: {k: v for k, v in dataclasses.asdict(spec).items()
                            if v not in (None, (), False) and k != "name"}
                for spec in self.params}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)  # PyYAML reads 1e-5 as a string


def _spec(name: str, raw: dict[str, Any]) -> ParamSpec:
    kind = raw.get("type", "categorical" if "choices" in raw else "float")
    if kind not in ("float", "int", "categorical"):
        raise ValueError(f"{name}: unknown type {kind!r}")
    spec = ParamSpec(
        name=name, type=kind, field=raw.get("field", name),
        low=_number(raw.get("low")), high=_number(raw.get("high")), log=bool(raw.get("log")),
        step=_number(raw.get("step")), choices=tuple(raw.get("choices", ())),
        times_epochs=bool(raw.get("times_epochs")),
    )
    if kind == "int":  # YAML may say 1.0; Optuna's IntDistribution wants ints
        spec = dataclasses.replace(spec, low=int(spec.low), high=int(spec.high),
                                   step=None if spec.step is None else int(spec.step))
    if kind == "categorical" and not spec.choices:
        raise ValueError(f"{name}: categorical needs choices")
    if kind != "categorical" and (spec.low is None or spec.high is None or spec.low > spec.high):
        raise ValueError(f"{name}: needs low <= high")
    unknown = set(raw) - {"type", "field", "low", "high", "log", "step", "choices",
                          "times_epochs"}
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
    return spec


def load_space(fusion: str, path: str | Path | None = None) -> Space:
    """The space of one fusion head; fields are checked against `TrainConfig` here."""
    document = yaml.safe_load(Path(path or DEFAULT_SPACES).read_text())
    heads = document.get("heads", {})
    if fusion not in heads:
        raise KeyError(f"no search space for fusion {fusion!r} in {path or DEFAULT_SPACES}; "
                       f"have {sorted(heads)}")
    block = heads[fusion]
    params = tuple(_spec(name, raw) for name, raw in block["params"].items())
    _check_fields(params)
    reference = dict(block.get("reference") or {})
    unknown = set(reference) - {p.name for p in params}
    if unknown:
        raise ValueError(f"{fusion}: reference names unknown parameters {sorted(unknown)}")
    return Space(fusion, params, reference)


def _check_fields(params: tuple[ParamSpec, ...]) -> None:
    from fusion.train import HeadConfig, TrainConfig

    top = {f.name for f in dataclasses.fields(TrainConfig)}
    head = {f.name for f in dataclasses.fields(HeadConfig)}
    for spec in params:
        group, _, leaf = spec.field.rpartition(".")
        ok = leaf in head if group == "head" else (not group and leaf in top)
        if not ok:
            raise ValueError(f"{spec.name}: {spec.field!r} is not a TrainConfig field")


def apply(config: TrainConfig, space: Space, values: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with the sampled values set on their fields."""
    top: dict[str, Any] = {}
    head: dict[str, Any] = {}
    for spec in space.params:
        value = values[spec.name]
        if spec.times_epochs:
            value = value * config.epochs
        if isinstance(value, float) and spec.type == "int":
            value = int(value)
        if spec.field.startswith("head."):
            head[spec.field.removeprefix("head.")] = value
        else:
            top[spec.field] = value
    return dataclasses.replace(config, head=dataclasses.replace(config.head, **head), **top)


def in_space(space: Space, values: dict[str, Any]) -> bool:
    """Whether every value lies in its distribution (an enqueued trial must)."""
    for spec in space.params:
        value = values.get(spec.name)
        if spec.type == "categorical":
            if value not in spec.choices:
                return False
        elif value is None or not (spec.low <= value <= spec.high) or (
            spec.log and value <= 0
        ) or (isinstance(value, float) and math.isnan(value)):
            return False
    return True
