"""Optuna storage: creation, checks before opening, and conversion of connection errors.

``open_storage`` returns an ``optuna.storages.RDBStorage``. For SQLite it waits for locks
instead of failing: every transaction starts with ``BEGIN IMMEDIATE``, so a writer takes the
lock up front and waits up to ``SQLITE_TIMEOUT`` seconds for it, and the rare leftover
"database is locked" error is retried. Several local worker processes can therefore share one
SQLite file. Heartbeats (``heartbeat_interval``) work on SQLite too and let any worker fail
trials whose process died.

Nothing is created or changed when a start fails: the folder of a SQLite file must already
exist, an existing file must be a SQLite database, and read-only callers (``must_exist``)
never create a file at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from search import credentials

logger = logging.getLogger(__name__)

SQLITE_TIMEOUT = 60.0
SQLITE_HEADER = b"SQLite format 3\x00"
# The first bytes of a SQLite rollback journal that still has to be played back.
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
LOCK_RETRIES = 5

T = TypeVar("T")


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (see ``search.credentials``).

    >>> mask_url("postgresql://user:secret@db/optuna")
    'postgresql://user:***@db/optuna'
    """
    return credentials.mask_url(url)


def sqlite_path(url: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URL, or None for other URLs and memory."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - reported by check_sqlite_url
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_sqlite_url(url: str, *, must_exist: bool, what: str, hint: str) -> Path | None:
    """Check a SQLite URL before anything opens it, so a failed start creates no file.

    Args:
        url: the storage URL; other schemes pass unchecked (returns None).
        must_exist: whether the database file must already exist (read-only callers).
        what: the name of the store in messages, e.g. "Optuna storage".
        hint: what to do, appended to messages.

    Raises:
        ValueError: the URL cannot be parsed, the folder is missing, the file is missing
            while ``must_exist`` is set, or the file is not a SQLite database.
    """
    import sqlalchemy

    try:
        sqlalchemy.engine.make_url(url)
    except Exception as error:  # noqa: BLE001 - sqlalchemy raises ArgumentError and others
        raise ValueError(f"invalid {what} URL {mask_url(url)!r}: {error}; {hint}") from None
    path = sqlite_path(url)
    if path is None:
        return None
    if not path.parent.is_dir():
        raise ValueError(
            f"cannot open {what} {mask_url(url)!r}: folder {str(path.parent)!r} does not "
            f"exist; {hint}"
        )
    if not path.exists():
        if must_exist:
            raise ValueError(f"cannot open {what} {mask_url(url)!r}: file not found; {hint}")
        return path
    if path.is_dir():
        raise ValueError(f"cannot open {what} {mask_url(url)!r}: it is a folder; {hint}")
    with path.open("rb") as stream:
        header = stream.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ValueError(
            f"cannot open {what} {mask_url(url)!r}: the file is not a SQLite database; "
            "restore it from a backup, or pass another database file"
        )
    _check_journal(url, path, what)
    return path


def _check_journal(url: str, path: Path, what: str) -> None:
    """Reject a rollback journal beside the database that SQLite would not recognise.

    A journal left by a writer that died starts with the journal magic number, and SQLite
    rolls it back on the next open, which is what recovers the database. A journal with any
    other non-zero header is not SQLite's, and SQLite would delete it without a word.
    """
    journal = path.with_name(path.name + "-journal")
    if not journal.is_file():
        return
    with journal.open("rb") as stream:
        header = stream.read(len(JOURNAL_MAGIC))
    if header.strip(b"\x00") and header != JOURNAL_MAGIC:
        raise ValueError(
            f"cannot open {what} {mask_url(url)!r}: {str(journal)!r} is not a SQLite rollback "
            "journal; if no process uses the database, move that file away and run again"
        )


def _is_lock_error(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def retry_locked(function: Callable[..., T]) -> Callable[..., T]:
    """Retry ``function`` a few times, with growing pauses, on SQLite lock errors."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(LOCK_RETRIES):
            try:
                return function(*args, **kwargs)
            except Exception as error:
                cause = error.__cause__ or error
                if attempt == LOCK_RETRIES - 1 or not (
                    _is_lock_error(error) or _is_lock_error(cause)
                ):
                    raise
                pause = 0.5 * 2**attempt
                logger.warning(
                    "%s: database is locked, retrying in %.1f s (%d/%d)",
                    function.__name__,
                    pause,
                    attempt + 1,
                    LOCK_RETRIES - 1,
                )
                time.sleep(pause)
        raise AssertionError("unreachable")

    return wrapper


def _configure_sqlite_engine(engine: Any) -> None:
    """Make every SQLite transaction take the write lock at its start and wait for it."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself instead of the sqlite3 module's deferred BEGIN.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections made while Optuna created its tables lack the hooks; drop them.
    engine.dispose()


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while tables are created in the database of ``url``.

    Optuna and MLflow create their tables when they first open an empty database; workers
    that start together would create them at once and fail on duplicate names. Inside this
    context, one process at a time does it. Other databases need no lock (SQLite locks the
    whole file), and the context does nothing for them.
    """
    import sqlalchemy

    try:
        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except Exception:  # noqa: BLE001 - an unparsable URL fails when it is opened
        backend = None
    if backend != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(b"polysearch schema").digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key}
                )
                connection.commit()
    finally:
        engine.dispose()


STORAGE_HINT = "pass --storage sqlite:///PATH/TO/optuna.db with an existing folder"

# Words of a SQLite error about a damaged or foreign file rather than a missing one.
_DAMAGED_FILE = ("malformed", "not a database", "encrypted", "disk i/o error")


def store_hint(url: str, error: BaseException, option: str, default_hint: str) -> str:
    """Return what to do after the store at ``url`` failed to open with ``error``.

    Args:
        url: the store's URL.
        error: the error it failed with.
        option: the command-line option that sets the URL, e.g. ``--storage``.
        default_hint: the hint for a SQLite file that cannot be created or opened.
    """
    import sqlalchemy

    text = str(error).lower()
    try:
        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL at all
        backend = url.partition(":")[0].lower()
    if backend == "sqlite":
        if any(words in text for words in _DAMAGED_FILE):
            return f"the file is damaged: restore it from a backup, or pass another {option}"
        return default_hint
    if backend in ("http", "https"):
        return f"start the MLflow server or check the address, or pass another {option}"
    if backend in ("postgresql", "mysql", "mariadb", "oracle", "mssql"):
        return (
            "check that the database server runs and accepts the URL's user, password and "
            f"database, or pass another {option}"
        )
    return f"pass {option} with a sqlite:///PATH or postgresql://USER@HOST/DATABASE URL"


def check_storage_url(url: str) -> None:
    """Check an Optuna storage URL without connecting to it or creating anything.

    Raises:
        ValueError: the URL cannot be parsed, names a database kind SQLAlchemy does not
            know, or is a SQLite file that ``check_sqlite_url`` rejects.
    """
    import sqlalchemy

    check_sqlite_url(url, must_exist=False, what="Optuna storage", hint=STORAGE_HINT)
    try:
        sqlalchemy.engine.make_url(url).get_dialect()
    except Exception as error:  # noqa: BLE001 - sqlalchemy raises NoSuchModuleError and others
        hint = store_hint(url, error, "--storage", STORAGE_HINT)
        raise ValueError(
            f"invalid Optuna storage URL {mask_url(url)!r}: {first_line(error)}; {hint}"
        ) from None


def open_storage(
    url: str,
    *,
    must_exist: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[Any, Any], None] | None = None,
) -> Any:
    """Open an Optuna RDB storage, converting every connection failure into a ValueError.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///studies/optuna.db`` or ``postgresql://...``.
        must_exist: reject a SQLite file that does not exist instead of creating it.
        heartbeat_interval: seconds between heartbeats of a running trial (None: off).
        grace_period: seconds without a heartbeat after which a running trial is stale.
        stale_trial_callback: called as ``(study, frozen_trial)`` after a stale trial failed.

    Raises:
        ValueError: the storage is unreachable, not a database, or of an incompatible
            schema; the message holds the URL with its password masked and a hint.
    """
    import optuna
    import sqlalchemy

    path = check_sqlite_url(url, must_exist=must_exist, what="Optuna storage", hint=STORAGE_HINT)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    elif not url.startswith("sqlite"):
        # A database server may close idle connections or restart while a trial runs; test
        # each pooled connection before use, so that a worker reconnects instead of failing.
        engine_kwargs["pool_pre_ping"] = True
    try:
        with schema_lock(url), warnings.catch_warnings():
            # Heartbeats are marked experimental in Optuna; the warning would precede every
            # error message and every launch.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = retry_locked(optuna.storages.RDBStorage)(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        hint = store_hint(url, error, "--storage", STORAGE_HINT)
        raise ValueError(
            f"cannot open Optuna storage {mask_url(url)!r}: {first_line(error)}; {hint}"
        ) from None
    except ImportError as error:
        raise ValueError(
            f"cannot open Optuna storage {mask_url(url)!r}: {first_line(error)} (the database "
            "driver for this URL is not installed); install it or pass another --storage"
        ) from None
    except RuntimeError as error:
        # Optuna raises RuntimeError for a schema version it cannot use.
        raise ValueError(
            f"cannot use Optuna storage {mask_url(url)!r}: {first_line(error)}; run "
            "'optuna storage upgrade' on it or pass another --storage"
        ) from None
    if path is not None:
        _configure_sqlite_engine(storage.engine)
    return storage


def first_line(error: BaseException) -> str:
    """Return the first line of an error's message with any password masked."""
    text = str(error).strip() or type(error).__name__
    return credentials.mask_text(text.splitlines()[0])


def load_study(storage: Any, name: str) -> Any:
    """Load an existing study, raising ValueError listing the stored names when it is absent."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(summary.study_name for summary in storage.get_all_studies())
        listed = ", ".join(names) if names else "none"
        raise ValueError(
            f"study {name!r} not found in the Optuna storage: stored studies are {listed}"
        ) from None
