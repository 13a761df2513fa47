"""Masking of credentials in storage and tracking URLs, messages and log records.

Storage and tracking URLs may carry a password (``postgresql://user:secret@host/db``,
``http://user:secret@host:5000``, ``postgresql://host/db?password=secret``). Everything this
project prints, logs, stores in MLflow or puts into an error message passes through
:func:`mask_url` (one URL) or :func:`mask_text` (free text that may contain URLs), which
replace the password by ``***`` and keep the rest, so the user still sees which server and
database a message is about.

To keep the password off command lines as well, leave it out of the URL: the PostgreSQL
drivers read it from ``PGPASSWORD`` or ``~/.pgpass``, and MLflow's HTTP client from
``MLFLOW_TRACKING_PASSWORD``.

>>> mask_url("postgresql://optuna:s3cret@db.example:5432/optuna")
'postgresql://optuna:***@db.example:5432/optuna'
>>> mask_text("cannot reach http://u:p@127.0.0.1:5000/api (timed out)")
'cannot reach http://u:***@127.0.0.1:5000/api (timed out)'
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

# Query and keyword parameters whose value is a secret. libpq accepts ``password``; other
# drivers and services use the rest.
SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "access_token", "api_key")

# ``scheme://user:password@`` anywhere in a text. The password ends at the last ``@`` before
# the host, because a password may itself contain ``@`` when the user did not percent-encode
# it; it may not contain a slash or whitespace, which end the authority part of a URL.
_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]*:)(?P<password>[^\s/]*)(?=@[^\s@/]*)"
)
# ``password=value`` in a query string (``?password=...&``) or a libpq keyword string
# (``host=db password=... dbname=x``); the value ends at ``&``, ``;`` or whitespace, or is
# quoted.
_KEYWORD = re.compile(
    r"(?P<head>(?<![a-zA-Z0-9_])(?:" + "|".join(SECRET_KEYS) + r")\s*=\s*)"
    r"(?P<password>'[^']*'|\"[^\"]*\"|[^\s&;'\"]+)",
    re.IGNORECASE,
)


def mask_text(text: str) -> str:
    """Return ``text`` with the password of every URL and every ``password=`` value masked.

    Text without credentials is returned unchanged.
    """
    if not isinstance(text, str):
        raise TypeError(f"mask_text expects a str, got {type(text).__name__}: {text!r}")
    masked = _USERINFO.sub(lambda match: match["head"] + MASK, text)
    return _KEYWORD.sub(lambda match: match["head"] + MASK, masked)


def mask_url(url: str) -> str:
    """Return ``url`` with its password, in the user part or the query, replaced by ``***``.

    Works on any scheme and on strings that no URL parser accepts, so it is safe to call on
    whatever a user passed as ``--storage`` or ``--mlflow-uri``.

    >>> mask_url("sqlite:///studies/optuna.db")
    'sqlite:///studies/optuna.db'
    """
    return mask_text(url)


def has_credentials(text: str) -> bool:
    """Return whether ``text`` contains a password that :func:`mask_text` would mask."""
    return mask_text(text) != text


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask credentials in a log record's message and traceback, in place, and return it.

    The message is formatted with its arguments first, so that a URL passed as an argument
    (``logger.info("opened %s", url)``) is masked as well.
    """
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        # A malformed format string: leave the record for the handler to report.
        return record
    masked = mask_text(message)
    if masked != message:
        record.msg = masked
        record.args = None
    if record.exc_info and not record.exc_text:
        # Format the traceback now, as a handler's formatter would, so it is masked too.
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = mask_text(record.exc_text)
    return record


def install_log_masking() -> None:
    """Mask credentials in every log record of the process, from any library's logger.

    Wraps the log record factory, so records are masked when they are created, before any
    handler sees them; handlers that libraries such as MLflow add on their own loggers are
    covered too. Calling it again changes nothing.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "masks_credentials", False):
        return

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_record(factory(*args, **kwargs))

    masking_factory.masks_credentials = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masking_factory)
