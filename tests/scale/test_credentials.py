"""Tests of credential masking in URLs, messages and log records."""

from __future__ import annotations

import logging

import pytest

from search.credentials import has_credentials, install_log_masking, mask_text, mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://optuna:s3cret@db:5432/optuna", "postgresql://optuna:***@db:5432/optuna"),
        ("postgresql+psycopg2://u:p@127.0.0.1/db", "postgresql+psycopg2://u:***@127.0.0.1/db"),
        (
            "mysql://root:x@localhost/optuna?charset=utf8",
            "mysql://root:***@localhost/optuna?charset=utf8",
        ),
        ("http://user:pa55@mlflow.internal:5000", "http://user:***@mlflow.internal:5000"),
        # A password with an unencoded '@' is masked up to the host.
        ("postgresql://u:p@ss@db/optuna", "postgresql://u:***@db/optuna"),
        # An empty user name.
        ("postgresql://:secret@db/optuna", "postgresql://:***@db/optuna"),
        (
            "postgresql://db/optuna?password=secret&sslmode=require",
            "postgresql://db/optuna?password=***&sslmode=require",
        ),
    ],
)
def test_mask_url_hides_password(url, masked):
    assert mask_url(url) == masked
    assert has_credentials(url)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///studies/optuna.db",
        "sqlite:////tmp/a:b/optuna.db",
        "postgresql://optuna@db:5432/optuna",
        "postgresql://db:5432/optuna",
        "http://127.0.0.1:5000",
        "not a url at all",
        "",
    ],
)
def test_mask_url_keeps_url_without_password(url):
    assert mask_url(url) == url
    assert not has_credentials(url)


def test_mask_text_masks_every_url_and_keyword():
    text = (
        "cannot reach postgresql://a:one@h1/x and http://b:two@h2:5000/api; "
        "dsn host=h3 password='three four' dbname=y, then PASSWORD=five"
    )
    masked = mask_text(text)
    for secret in ("one", "two", "three four", "five"):
        assert secret not in masked
    assert "postgresql://a:***@h1/x" in masked
    assert "http://b:***@h2:5000/api" in masked
    assert "password=*** dbname=y" in masked


def test_mask_text_rejects_non_string():
    with pytest.raises(TypeError, match="expects a str"):
        mask_text(b"postgresql://a:b@c/d")


def test_log_masking_covers_arguments_and_tracebacks(caplog):
    install_log_masking()
    install_log_masking()  # a second call adds nothing
    logger = logging.getLogger("tests.scale.credentials")
    url = "postgresql://user:hunter2@db/optuna"
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("opening %s", url)
        try:
            raise ValueError(f"cannot open {url}")
        except ValueError:
            logger.exception("failed")
    text = caplog.text
    assert "hunter2" not in text
    assert "opening postgresql://user:***@db/optuna" in text
    assert "ValueError: cannot open postgresql://user:***@db/optuna" in text
