"""Study specifications: TOML files in ``studies/`` that describe one search each.

A specification names the network and its checkpoint, the dataset, the approximation
strategy, the search space, the objectives, the sampler and pruner, the budget and where
results are stored. Every field has a default except ``network.name``, ``network.checkpoint``
and ``data.dataset``; ``studies/README.md`` documents each one. Command-line options
override fields by their dotted key (``search.n_trials``, ``space.degree``, ...).

Example::

    spec = load_spec("studies/cnn2-mnist.toml", overrides={"search.n_trials": 10})
    spec.search.n_trials  # 10
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGIES = ("all-at-once", "stepwise", "stepwise-retrain")
GRANULARITIES = ("layer", "channel")
OBJECTIVES = ("accuracy", "he_cost")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
PRUNERS = ("median", "hyperband", "none")
FIGURES = ("all", "best", "none")
OPTIMIZERS = ("adam", "sgd")
RETRAIN_SCOPES = ("downstream", "all")
DATASETS = ("mnist", "cifar10", "caltech101")

DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
DEFAULT_MLFLOW_URI = "sqlite:///mlruns/mlflow.db"

# Samplers that support one objective only; the others accept one or two objectives.
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
# Degrees a search space may contain. The fitter accepts other degrees (``polysearch fit``),
# but searches stay within 2-8: degree 1 is a line, not an approximation of a nonlinearity.
DEGREE_LIMITS = (2, 8)


@dataclass(frozen=True)
class NetworkSpec:
    """The network to approximate and the checkpoint holding its trained weights."""

    name: str
    checkpoint: Path


@dataclass(frozen=True)
class TrainSpec:
    """How to train the network when its checkpoint file does not exist yet."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 7e-3
    optimizer: str = "adam"


@dataclass(frozen=True)
class DataSpec:
    """The dataset, where it lives and how many training images calibrate the sites."""

    dataset: str
    dir: Path | None = None
    download: bool = False
    limit: int | None = None
    calibration_size: int = 1000


@dataclass(frozen=True)
class ApproximationSpec:
    """How the polynomials replace the nonlinearities."""

    strategy: str = "all-at-once"
    granularity: str = "layer"
    per_channel_search: bool = False


@dataclass(frozen=True)
class SpaceSpec:
    """The search space of every site: degree and percentile ranges (inclusive)."""

    degree: tuple[int, int] = (2, 8)
    percentile: tuple[float, float] = (90.0, 100.0)
    percentile_step: float = 0.1


@dataclass(frozen=True)
class SearchOptions:
    """Objectives, sampler, pruner and budget of the study."""

    objectives: tuple[str, ...] = ("accuracy",)
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int = 30
    timeout: float = 0.0
    workers: int = 1
    heartbeat_interval: int = 10
    grace_period: int = 30


@dataclass(frozen=True)
class RetrainSpec:
    """Retraining between steps of the ``stepwise-retrain`` strategy."""

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    scope: str = "downstream"
    batch_size: int = 128


@dataclass(frozen=True)
class TrackingSpec:
    """Where the Optuna study and the MLflow runs are stored, and which figures are logged."""

    storage: str = DEFAULT_STORAGE
    mlflow_uri: str = DEFAULT_MLFLOW_URI
    figures: str = "best"


@dataclass(frozen=True)
class StudySpec:
    """A validated study specification."""

    name: str
    seed: int
    network: NetworkSpec
    train: TrainSpec
    data: DataSpec
    approximation: ApproximationSpec
    space: SpaceSpec
    search: SearchOptions
    retrain: RetrainSpec
    tracking: TrackingSpec
    source: Path | None = None

    @property
    def directions(self) -> list[str]:
        """Optuna directions, one per objective."""
        objectives = self.search.objectives
        return ["maximize" if name == "accuracy" else "minimize" for name in objectives]

    def to_dict(self) -> dict[str, Any]:
        """Return the specification as plain TOML-like values, keyed by section."""
        result: dict[str, Any] = {"name": self.name, "seed": self.seed}
        for section in SECTIONS:
            values = {}
            for key in SECTIONS[section]:
                value = getattr(getattr(self, section), key)
                if isinstance(value, Path):
                    value = str(value)
                elif isinstance(value, tuple):
                    value = list(value)
                if value is not None:
                    values[key] = value
            result[section] = values
        return result


# ---------------------------------------------------------------------------------------------
# Field checks. Each returns the converted value or raises ValueError with the allowed values.


def _reject(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"invalid value {value!r} for '{key}': expected {allowed}")


def _string(allowed_values: tuple[str, ...] | None = None) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if allowed_values is not None:
            if value not in allowed_values:
                raise _reject(key, value, "one of " + ", ".join(map(repr, allowed_values)))
            return value
        if not isinstance(value, str) or not value.strip():
            raise _reject(key, value, "a non-empty string")
        return value

    return check


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        upper = "" if maximum is None else f" and at most {maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise _reject(key, value, f"an integer of at least {minimum}{upper}")
        if value < minimum or (maximum is not None and value > maximum):
            raise _reject(key, value, f"an integer of at least {minimum}{upper}")
        return value

    return check


def _number(minimum: float, *, strict: bool) -> Callable[[str, Any], float]:
    bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"

    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _reject(key, value, f"a number {bound}")
        number = float(value)
        if not math.isfinite(number) or number < minimum or (strict and number == minimum):
            raise _reject(key, value, f"a number {bound}")
        return number

    return check


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _reject(key, value, "true or false")
    return value


def _path(key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _reject(key, value, "a file path (string)")
    return Path(value)


def _degree_range(key: str, value: Any) -> tuple[int, int]:
    low, high = DEGREE_LIMITS
    allowed = f"[low, high] integers with {low} <= low <= high <= {high}"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _reject(key, value, allowed)
    if any(isinstance(item, bool) or not isinstance(item, int) for item in value):
        raise _reject(key, value, allowed)
    if not low <= value[0] <= value[1] <= high:
        raise _reject(key, value, allowed)
    return (int(value[0]), int(value[1]))


def _percentile_range(key: str, value: Any) -> tuple[float, float]:
    allowed = "[low, high] numbers with 0 < low <= high <= 100"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _reject(key, value, allowed)
    if any(isinstance(item, bool) or not isinstance(item, int | float) for item in value):
        raise _reject(key, value, allowed)
    if not 0 < value[0] <= value[1] <= 100:
        raise _reject(key, value, allowed)
    return (float(value[0]), float(value[1]))


def _objectives(key: str, value: Any) -> tuple[str, ...]:
    allowed = "['accuracy'] or ['accuracy', 'he_cost']"
    if not isinstance(value, list | tuple) or tuple(value) not in (
        ("accuracy",),
        ("accuracy", "he_cost"),
    ):
        raise _reject(key, value, allowed)
    return tuple(value)


# Section -> field -> check. Top-level scalar fields are listed under "".
SECTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "network": {"name": _string(), "checkpoint": _path},
    "train": {
        "epochs": _integer(1),
        "batch_size": _integer(1),
        "lr": _number(0.0, strict=True),
        "optimizer": _string(OPTIMIZERS),
    },
    "data": {
        "dataset": _string(DATASETS),
        "dir": _path,
        "download": _boolean,
        "limit": _integer(1),
        "calibration_size": _integer(1),
    },
    "approximation": {
        "strategy": _string(STRATEGIES),
        "granularity": _string(GRANULARITIES),
        "per_channel_search": _boolean,
    },
    "space": {
        "degree": _degree_range,
        "percentile": _percentile_range,
        "percentile_step": _number(0.0, strict=False),
    },
    "search": {
        "objectives": _objectives,
        "sampler": _string(SAMPLERS),
        "pruner": _string(PRUNERS),
        "n_trials": _integer(1),
        "timeout": _number(0.0, strict=False),
        "workers": _integer(1),
        "heartbeat_interval": _integer(1),
        "grace_period": _integer(1),
    },
    "retrain": {
        "epochs": _integer(1),
        "lr": _number(0.0, strict=True),
        "optimizer": _string(OPTIMIZERS),
        "scope": _string(RETRAIN_SCOPES),
        "batch_size": _integer(1),
    },
    "tracking": {
        "storage": _string(),
        "mlflow_uri": _string(),
        "figures": _string(FIGURES),
    },
}
TOP_LEVEL: dict[str, Callable[[str, Any], Any]] = {"name": _string(), "seed": _integer(0)}
REQUIRED = ("network.name", "network.checkpoint", "data.dataset")
SECTION_TYPES = {
    "network": NetworkSpec,
    "train": TrainSpec,
    "data": DataSpec,
    "approximation": ApproximationSpec,
    "space": SpaceSpec,
    "search": SearchOptions,
    "retrain": RetrainSpec,
    "tracking": TrackingSpec,
}


def known_keys() -> list[str]:
    """Return every dotted key a specification accepts."""
    keys = list(TOP_LEVEL)
    for section, fields in SECTIONS.items():
        keys.extend(f"{section}.{field}" for field in fields)
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from the command line; VALUE is read as TOML, else as a string.

    >>> parse_override("space.degree=[2, 6]")
    ('space.degree', [2, 6])
    """
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"invalid override {text!r}: expected KEY=VALUE, e.g. search.n_trials=10")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if value is None:
            continue
        section, dot, field = key.partition(".")
        if not dot:
            if section not in TOP_LEVEL:
                raise _unknown_key(key)
            raw[section] = value
            continue
        if section not in SECTIONS or field not in SECTIONS[section]:
            raise _unknown_key(key)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"invalid value {target!r} for '{section}': expected a table")
        target[field] = value


def _unknown_key(key: str) -> ValueError:
    return ValueError(f"unknown key '{key}': expected one of {', '.join(known_keys())}")


def build_spec(
    raw: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    default_name: str | None = None,
    source: Path | None = None,
) -> StudySpec:
    """Validate a specification given as nested dictionaries (as ``tomllib`` returns them).

    Args:
        raw: the parsed TOML document.
        overrides: dotted key -> value; these replace the document's values. ``None`` values
            are ignored, so unset command-line options can be passed as they are.
        default_name: the study name when the document has no ``name`` (the file stem).
        source: the file the document came from, kept for messages and reruns.

    Raises:
        ValueError: one line naming the first unknown key, missing key or invalid value and
            the values allowed there.
    """
    document: dict[str, Any] = {
        key: dict(value) if isinstance(value, Mapping) else value for key, value in raw.items()
    }
    # The document's own values are checked too where an override replaces them, so that a
    # wrong value in a file is found even while the command line hides it.
    _check_fields(document)
    _apply_overrides(document, overrides or {})

    for key in document:
        if key not in TOP_LEVEL and key not in SECTIONS:
            raise _unknown_key(key)
    for key in REQUIRED:
        section, field = key.split(".")
        if field not in document.get(section, {}):
            raise ValueError(f"missing key '{key}': every specification must set it")

    top: dict[str, Any] = {"name": default_name, "seed": 0}
    for key, check in TOP_LEVEL.items():
        if key in document:
            top[key] = check(key, document[key])
    if top["name"] is None:
        raise ValueError("missing key 'name': set it, or load the specification from a file")

    sections: dict[str, Any] = {}
    for section, fields in SECTIONS.items():
        values = document.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"invalid value {values!r} for '{section}': expected a table")
        converted = {}
        for field, value in values.items():
            key = f"{section}.{field}"
            if field not in fields:
                raise _unknown_key(key)
            converted[field] = fields[field](key, value)
        sections[section] = SECTION_TYPES[section](**converted)

    spec = StudySpec(name=top["name"], seed=top["seed"], source=source, **sections)
    _check_combinations(spec)
    return spec


def _check_fields(document: Mapping[str, Any]) -> None:
    """Check every key and value of a document on its own (no required keys, no
    combinations)."""
    for key, value in document.items():
        if key in TOP_LEVEL:
            TOP_LEVEL[key](key, value)
            continue
        if key not in SECTIONS:
            raise _unknown_key(key)
        if not isinstance(value, Mapping):
            raise ValueError(f"invalid value {value!r} for '{key}': expected a table")
        for field, field_value in value.items():
            if field not in SECTIONS[key]:
                raise _unknown_key(f"{key}.{field}")
            SECTIONS[key][field](f"{key}.{field}", field_value)


def _check_combinations(spec: StudySpec) -> None:
    """Reject field values that are valid alone but not together."""
    search = spec.search
    two_objectives = len(search.objectives) == 2
    if two_objectives and search.sampler in SINGLE_OBJECTIVE_SAMPLERS:
        allowed = [name for name in SAMPLERS if name not in SINGLE_OBJECTIVE_SAMPLERS]
        raise ValueError(
            f"invalid value {search.sampler!r} for 'search.sampler' with two objectives: "
            f"expected one of {', '.join(map(repr, allowed))}"
        )
    if two_objectives and search.pruner != "none":
        raise ValueError(
            f"invalid value {search.pruner!r} for 'search.pruner' with two objectives: "
            "expected 'none', because Optuna prunes single-objective studies only"
        )
    if search.grace_period <= search.heartbeat_interval:
        raise ValueError(
            f"invalid value {search.grace_period!r} for 'search.grace_period': expected more "
            f"than search.heartbeat_interval ({search.heartbeat_interval} s)"
        )
    if spec.approximation.per_channel_search and spec.approximation.granularity != "channel":
        raise ValueError(
            "invalid value true for 'approximation.per_channel_search': expected false unless "
            "approximation.granularity is 'channel'"
        )
    low, high = spec.space.percentile
    step = spec.space.percentile_step
    if step > 0:
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-6:
            raise ValueError(
                f"invalid value {step!r} for 'space.percentile_step': expected 0 (continuous) "
                f"or a step that divides the percentile range {high:g} - {low:g}"
            )


def load_spec(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Read and validate a study specification from a TOML file.

    Args:
        path: the TOML file; its stem is the study name unless the file sets ``name``.
        overrides: dotted key -> value, applied over the file (``None`` values ignored).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid TOML, or a key or value is invalid (one line naming
            the key and the allowed values).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"study specification {str(path)!r} is a folder: pass a TOML file in it, such "
            "as studies/cnn2-mnist.toml"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"study specification {str(path)!r} not found: pass a TOML file such as "
            "studies/cnn2-mnist.toml"
        )
    try:
        with path.open("rb") as stream:
            raw = tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"invalid TOML in {str(path)!r}: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"invalid TOML in {str(path)!r}: {error}") from None
    return build_spec(raw, overrides=overrides, default_name=path.stem, source=path)
