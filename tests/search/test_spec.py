"""Tests of study specification loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.spec import build_spec, load_spec, parse_override

MINIMAL = {
    "network": {"name": "cnn2", "checkpoint": "checkpoints/cnn2-mnist.pt"},
    "data": {"dataset": "mnist"},
}
STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_spec_defaults_fill_missing_fields():
    spec = build_spec(MINIMAL, default_name="demo")
    assert spec.name == "demo"
    assert spec.space.degree == (2, 8)
    assert spec.search.objectives == ("accuracy",)
    assert spec.directions == ["maximize"]
    assert spec.tracking.storage == "sqlite:///studies/optuna.db"
    assert spec.tracking.mlflow_uri == "sqlite:///mlruns/mlflow.db"


@pytest.mark.parametrize(
    "name", ["cnn1-mnist", "cnn2-mnist", "lenet5-mnist", "lenet5-cifar10", "lenet5-caltech101"]
)
def test_spec_shipped_files_load(name):
    spec = load_spec(STUDIES / f"{name}.toml")
    assert spec.name == name
    assert spec.network.checkpoint == Path(f"checkpoints/{name}.pt")


def test_spec_overrides_win_over_file():
    spec = load_spec(
        STUDIES / "cnn2-mnist.toml",
        overrides={"search.n_trials": 7, "space.degree": [3, 5], "name": "other", "seed": None},
    )
    assert spec.search.n_trials == 7
    assert spec.space.degree == (3, 5)
    assert spec.name == "other"
    # A None override (an unset command-line option) keeps the file's value.
    assert spec.seed == 0


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"search.n_trial": 3}, "unknown key 'search.n_trial'"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"space.degree": [1, 17]}, "'space.degree'"),
        ({"space.degree": [6, 4]}, "'space.degree'"),
        ({"space.percentile": [0, 100]}, "'space.percentile'"),
        ({"space.percentile_step": 0.3}, "'space.percentile_step'"),
        ({"search.sampler": "grid"}, "'tpe', 'random', 'cmaes', 'gp', 'nsga2'"),
        ({"search.n_trials": 0}, "'search.n_trials'"),
        ({"search.n_trials": True}, "'search.n_trials'"),
        ({"search.objectives": ["he_cost"]}, "'search.objectives'"),
        ({"search.objectives": ["accuracy", "he_cost"]}, "'search.pruner' with two"),
        ({"approximation.strategy": "greedy"}, "'all-at-once', 'stepwise'"),
        ({"approximation.per_channel_search": True}, "'approximation.per_channel_search'"),
        ({"search.grace_period": 5}, "'search.grace_period'"),
    ],
)
def test_spec_invalid_value_names_key(overrides, fragment):
    with pytest.raises(ValueError) as info:
        build_spec(MINIMAL, default_name="demo", overrides=overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_spec_two_objectives_reject_cmaes():
    overrides = {
        "search.objectives": ["accuracy", "he_cost"],
        "search.pruner": "none",
        "search.sampler": "cmaes",
    }
    with pytest.raises(ValueError, match="'search.sampler' with two objectives"):
        build_spec(MINIMAL, default_name="demo", overrides=overrides)


def test_spec_missing_required_key():
    with pytest.raises(ValueError, match="missing key 'data.dataset'"):
        build_spec({"network": MINIMAL["network"]}, default_name="demo")


def test_spec_invalid_toml_names_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[network\nname = 1\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_spec(path)


def test_spec_missing_file():
    with pytest.raises(FileNotFoundError, match="not-there.toml"):
        load_spec("not-there.toml")


def test_parse_override_reads_toml_values():
    assert parse_override("space.degree=[2, 6]") == ("space.degree", [2, 6])
    assert parse_override("search.sampler=random") == ("search.sampler", "random")
    assert parse_override("search.timeout=1.5") == ("search.timeout", 1.5)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_override("space.degree")


def test_spec_invalid_file_value_under_override():
    # The override is valid, but the file's own value is not: the file must be fixed.
    raw = {**MINIMAL, "search": {"n_trials": "30"}}
    with pytest.raises(ValueError) as info:
        build_spec(raw, default_name="demo", overrides={"search.n_trials": 1})
    assert "'search.n_trials'" in str(info.value)
    assert "'30'" in str(info.value)


def _search_options(*argv: str):
    import argparse

    from search.commands.search import add_arguments, spec_overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return spec_overrides(parser.parse_args([str(STUDIES / "cnn2-mnist.toml"), *argv]))


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--set", "search.n_trials=31"], "n_trials", 31),
        (["--n-trials", "12"], "n_trials", 12),
        (["--set", "search.n_trials=12", "--n-trials", "12"], "n_trials", 12),
        (["--set", 'tracking.storage="sqlite:///other.db"'], "storage", "sqlite:///other.db"),
        (["--set", 'name="renamed"'], "name", "renamed"),
        (["--set", "search.workers=2"], "workers", 2),
        (["--set", "search.timeout=60"], "timeout", 60),
    ],
)
def test_search_options_set_named_keys(argv, field, expected):
    spec = load_spec(STUDIES / "cnn2-mnist.toml", overrides=_search_options(*argv))
    values = {
        "n_trials": spec.search.n_trials,
        "storage": spec.tracking.storage,
        "name": spec.name,
        "workers": spec.search.workers,
        "timeout": spec.search.timeout,
    }
    assert values[field] == expected


def test_search_options_set_invalid_named_key():
    overrides = _search_options("--set", 'search.n_trials="ten"')
    with pytest.raises(ValueError, match="'search.n_trials'"):
        load_spec(STUDIES / "cnn2-mnist.toml", overrides=overrides)


def test_search_options_conflict_rejected():
    with pytest.raises(ValueError, match="--n-trials 5 and --set search.n_trials=6 disagree"):
        _search_options("--set", "search.n_trials=6", "--n-trials", "5")


def test_spec_folder_rejected():
    with pytest.raises(ValueError, match="is a folder: pass a TOML file in it"):
        load_spec(STUDIES)
