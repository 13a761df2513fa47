"""Tests of Optuna storage opening, error conversion and concurrent SQLite use."""

from __future__ import annotations

import multiprocessing

import optuna
import pytest

from search.storage import STORAGE_HINT, check_storage_url, mask_url, open_storage, store_hint


def test_mask_url_hides_password():
    assert mask_url("postgresql://user:secret@localhost/optuna") == (
        "postgresql://user:***@localhost/optuna"
    )


def test_open_storage_missing_folder_creates_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/absent/optuna.db"
    with pytest.raises(ValueError, match="does not exist") as info:
        open_storage(url)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "absent").exists()


def test_open_storage_rejects_non_sqlite_file(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"plain text, not a database\n")
    with pytest.raises(ValueError, match="not a SQLite database"):
        open_storage(f"sqlite:///{path}")
    assert path.read_bytes() == b"plain text, not a database\n"


def test_open_storage_must_exist_creates_nothing(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        open_storage(f"sqlite:///{tmp_path}/optuna.db", must_exist=True)
    assert list(tmp_path.iterdir()) == []


def test_open_storage_unreachable_server_masks_password():
    url = "postgresql://user:secret@127.0.0.1:1/optuna"
    with pytest.raises(ValueError) as info:
        open_storage(url)
    message = str(info.value)
    assert "secret" not in message
    assert "user:***@127.0.0.1:1" in message
    assert "\n" not in message


def _write_trials(url: str, count: int) -> None:
    storage = open_storage(url)
    study = optuna.load_study(study_name="shared", storage=storage)
    for _ in range(count):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))


def test_open_storage_concurrent_writers(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="shared", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_trials, args=(url, 15)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    # A "database is locked" error would end a writer with a non-zero exit code.
    assert [process.exitcode for process in processes] == [0, 0, 0]
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    assert len(study.trials) == 45


@pytest.mark.parametrize(
    ("url", "error", "fragment"),
    [
        ("sqlite:///a.db", "database disk image is malformed", "the file is damaged"),
        ("sqlite:///a.db", "file is not a database", "the file is damaged"),
        ("sqlite:///a.db", "unable to open database file", "with an existing folder"),
        ("postgresql://u:p@127.0.0.1:1/db", "Connection refused", "database server runs"),
        ("http://127.0.0.1:1", "Connection refused", "start the MLflow server"),
        ("foo://bar", "Can't load plugin", "sqlite:///PATH or postgresql://USER@HOST"),
    ],
)
def test_store_hint_names_next_step(url, error, fragment):
    hint = store_hint(url, RuntimeError(error), "--storage", STORAGE_HINT)
    assert fragment in hint


def test_open_storage_damaged_file_hint(tmp_path):
    path = tmp_path / "optuna.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(ValueError, match="the file is damaged: restore it from a backup"):
        open_storage(f"sqlite:///{path}")


def test_check_storage_url_unknown_scheme():
    with pytest.raises(ValueError, match="invalid Optuna storage URL 'foo://bar'"):
        check_storage_url("foo://bar")
