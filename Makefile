# saascore: `make demo` runs the service on the embedded SQLite database; `make test` runs the
# tests on SQLite and PostgreSQL. Both set everything up first; nothing else is needed.

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := .venv
# Installed packages are compiled once, at install: where PYTHONDONTWRITEBYTECODE is set, every
# process (each CLI call, each server a test starts) would otherwise compile them all again.
export UV_COMPILE_BYTECODE := 1
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN := $(UV) run --frozen --no-sync
# The browser test (tests/api/test_docs_browser.py) drives Debian's Chromium, never a download.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help setup chromium pdf demo serve test fuzz lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.tools/bin/uv:  # uv is not installed: put it in .tools/ with pip
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools "uv>=0.9"

.venv/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --all-extras --python $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
	$(RUN) python -m compileall -q src > /dev/null
	touch $@

setup: .venv/.synced chromium pdf  ## install saascore, its tools (uv, pinned by uv.lock), chromium, PDF libraries

# Debian's chromium when it is missing; where it cannot be installed the browser test skips,
# except on CI (CI=true), where that is a failure.
chromium:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian's chromium for the browser test"; \
	  { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; \
	  } || if [ "$$CI" = true ]; then \
	    echo "chromium could not be installed, and CI runs the browser test" >&2; exit 1; \
	  else \
	    echo "chromium could not be installed: the browser test will skip"; \
	  fi; }

# WeasyPrint (invoice PDFs) needs Debian's Pango and a font that covers Arabic script: DejaVu
# Sans, with Amiri as a fallback. Installed when missing; where they cannot be, the PDF tests
# skip, except on CI (CI=true), where that is a failure.
PDF_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core fonts-hosny-amiri
pdf:
	@missing=$$(for package in $(PDF_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q 'ok installed' || echo $$package; \
	done); \
	test -z "$$missing" && exit 0; \
	echo "installing Debian's Pango and fonts for invoice PDFs"; \
	{ $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing > /dev/null; \
	} || if [ "$$CI" = true ]; then \
	  echo "the PDF libraries could not be installed, and CI runs the PDF tests" >&2; exit 1; \
	else \
	  echo "the PDF libraries could not be installed: the PDF tests will skip"; \
	fi

demo: .venv/.synced  ## run the service on the embedded SQLite database at http://127.0.0.1:8000
	$(RUN) saascore demo $(if $(PORT),--port $(PORT))

serve: .venv/.synced  ## run the service on the configured database
	$(RUN) saascore serve

test: setup  ## run the whole test suite (SQLite and PostgreSQL)
	$(RUN) pytest -n 2 --dist worksteal $(PYTEST_ARGS)

fuzz: setup  ## the property and state-machine tests with fresh random seeds, 10x the examples
	HYPOTHESIS_PROFILE=fuzz $(RUN) pytest -n 2 --dist worksteal -m hypothesis $(PYTEST_ARGS)

lint: setup  ## ruff check, ruff format --check, mypy --strict, the layers (import-linter)
	$(RUN) ruff check src tests bench
	$(RUN) ruff format --check src tests bench
	$(RUN) mypy
	$(RUN) lint-imports --no-cache --no-logo

format: setup  ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix src tests bench
	$(RUN) ruff format src tests bench

bench: setup  ## run the benchmarks in bench/ (each prints its figure beside its reference)
	@for script in bench/*.py; do echo "== $$script"; $(RUN) python $$script || exit 1; done

clean:  ## remove the virtualenv, caches and the demo database
	rm -rf .venv .tools .saascore .pytest_cache .mypy_cache .ruff_cache
