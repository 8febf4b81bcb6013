"""Search spaces read from `spaces.yaml`: one readable file, one block per fusion head.

Per protocol: `heads:` holds the `clean` protocol's spaces; `protocols: {authors: {heads:
...}, paper: {heads: ...}}` holds the others' (their SGD recipe wants learning rates on
another scale than our AdamW). A sweep under a protocol the file has no block for stops with
one line naming the file: no protocol silently borrows another's space.

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

from features.errors import HarnessError

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


def _number(name: str, raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    try:
        return None if value is None else float(value)  # PyYAML reads 1e-5 as a string
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {key} {value!r} is not a number") from None


def _spec(name: str, raw: dict[str, Any]) -> ParamSpec:
    kind = raw.get("type", "categorical" if "choices" in raw else "float")
    if kind not in ("float", "int", "categorical"):
        raise ValueError(f"{name}: unknown type {kind!r}")
    unknown = set(raw) - {"type", "field", "low", "high", "log", "step", "choices",
                          "times_epochs"}
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
    choices = raw.get("choices", ())
    if not isinstance(choices, list | tuple):
        raise ValueError(f"{name}: choices must be a list")
    spec = ParamSpec(
        name=name, type=kind, field=str(raw.get("field", name)),
        low=_number(name, raw, "low"), high=_number(name, raw, "high"),
        log=bool(raw.get("log")), step=_number(name, raw, "step"), choices=tuple(choices),
        times_epochs=bool(raw.get("times_epochs")),
    )
    if kind == "categorical" and not spec.choices:
        raise ValueError(f"{name}: categorical needs choices")
    if kind != "categorical" and (spec.low is None or spec.high is None or spec.low > spec.high):
        raise ValueError(f"{name}: needs low <= high")
    if kind == "int":  # YAML may say 1.0; Optuna's IntDistribution wants ints
        spec = dataclasses.replace(spec, low=int(spec.low), high=int(spec.high),
                                   step=None if spec.step is None else int(spec.step))
    try:
        spec.distribution()  # Optuna's own checks (log needs low > 0, ...) before any trial
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: {error}") from None
    return spec


def load_space(fusion: str, path: str | Path | None = None, protocol: str = "clean") -> Space:
    """The space of one fusion head under `protocol`; fields are checked against
    `TrainConfig` here.

    Any problem with the file is one HarnessError naming it (the sweep checks this before
    it creates or touches a study).
    """
    path = Path(path or DEFAULT_SPACES)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise HarnessError(f"--space {path}: cannot read the search space: "
                           f"{getattr(error, 'strerror', None) or error}") from None
    try:
        return _parse_space(fusion, _protocol_block(document, protocol))
    except ValueError as error:
        raise HarnessError(f"--space {path}: {error}; see sweeps/spaces.yaml for the format"
                           ) from None


def _protocol_block(document: Any, protocol: str) -> Any:
    """The document's `heads:` block for `protocol` (module docstring)."""
    if protocol == "clean" or not isinstance(document, dict):
        return document
    protocols = document.get("protocols")
    block = protocols.get(protocol) if isinstance(protocols, dict) else None
    if not isinstance(block, dict):
        raise ValueError(f"no search spaces for --protocol {protocol} (a `protocols: "
                         f"{protocol}: heads:` block)")
    return block


def _parse_space(fusion: str, document: Any) -> Space:
    heads = document.get("heads") if isinstance(document, dict) else None
    if not isinstance(heads, dict):
        raise ValueError("expected a mapping `heads: {<fusion>: {params: ...}}`")
    if fusion not in heads:
        raise ValueError(f"no search space for fusion {fusion!r}; have {sorted(heads)}")
    block = heads[fusion]
    raw_params = block.get("params") if isinstance(block, dict) else None
    if not isinstance(raw_params, dict) or not all(isinstance(r, dict)
                                                   for r in raw_params.values()):
        raise ValueError(f"{fusion}: `params:` must map each name to its settings")
    params = tuple(_spec(name, raw) for name, raw in raw_params.items())
    _check_fields(params)
    reference = block.get("reference") or {}
    if not isinstance(reference, dict):
        raise ValueError(f"{fusion}: `reference:` must map parameter names to values")
    unknown = set(reference) - {p.name for p in params}
    if unknown:
        raise ValueError(f"{fusion}: reference names unknown parameters {sorted(unknown)}")
    return Space(fusion, params, dict(reference))


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
