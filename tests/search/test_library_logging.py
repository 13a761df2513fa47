"""Tests of how Optuna's and MLflow's log records reach standard error."""

from __future__ import annotations

import logging

from search.tracking import configure_library_logging

LOGGERS = ("optuna.storages._rdb.storage", "mlflow.store.db.utils")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_library_records_one_line_each():
    configure_library_logging()
    handler = _Collect()
    # MLflow's loggers do not propagate to the root logger once MLflow is imported, so the
    # handler sits on the loggers themselves, after their filters.
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("connection lost\nSQL: SELECT 1")
        except RuntimeError:
            loggers[0].warning("Caught an error: %s", "refused\n[SQL: SELECT 1]", exc_info=True)
            loggers[1].exception(
                "SQLAlchemy database error. The following exception is caught.\nrefused"
            )
            loggers[1].warning("kept\nas it is")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)

    messages = [(record.name, record.getMessage()) for record in handler.records]
    assert messages == [
        ("optuna.storages._rdb.storage", "Caught an error: refused"),
        ("mlflow.store.db.utils", "kept\nas it is"),
    ]
    assert handler.records[0].exc_info is None
