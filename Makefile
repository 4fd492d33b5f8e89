# xpod: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xpod-installed
FRESH  := build/fresh
# pytest's workers: the suite is sized for a 2-core machine.
PYTEST_ARGS ?=

.PHONY: install test lint demo check-install clean proto proto-lint prometheus-tools postgresql-tools walkthrough-tools docs docs-ref

# torch is pinned to the CPU build this machine serves locally; an unpinned torch would pull
# gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/xpod demo

test: install lint check-install prometheus-tools postgresql-tools walkthrough-tools
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# The guardrails (configured in pyproject.toml): ruff lint and format check, mypy on hal/ and
# scheduler/core/, the import rules. mypy and import-linter read the package through
# build/typecheck/xpod, a tree of links that gives the top-level folders their import names.
TYPECHECK := build/typecheck
lint: install
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/xpod && ln -s $(CURDIR)/xpod/__init__.py $(TYPECHECK)/xpod/__init__.py
	@for d in hal backends scheduler runtime proto; do cp -rs $(CURDIR)/$$d $(TYPECHECK)/xpod/$$d; done
	@find $(TYPECHECK) -name __pycache__ -prune -exec rm -rf {} +
	@bash -o pipefail -c '$(VENV)/bin/mypy | sed "s#$(TYPECHECK)/xpod/##"'
	@cd $(TYPECHECK) && bash -o pipefail -c '$(CURDIR)/$(VENV)/bin/lint-imports --no-cache $(CURDIR)/pyproject.toml | tail -n +12'

# Before the tests: the package builds as a wheel from the files a fresh clone has, installs
# (non-editable, so the package-dir mapping is exercised), imports from there, and `xpod --help` runs.
check-install: install
	@rm -rf $(FRESH) && mkdir -p $(FRESH)/src
	@git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C $(FRESH)/src
	@$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps -w $(FRESH)/wheel $(FRESH)/src >/dev/null
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target $(FRESH)/site $(FRESH)/wheel/*.whl
	@cd $(FRESH) && PYTHONPATH=$(CURDIR)/$(FRESH)/site $(CURDIR)/$(PY) -c "import xpod.hal, xpod.backends, xpod.runtime.cli as c, sys; assert '/$(FRESH)/site/' in xpod.hal.__file__, xpod.hal.__file__; c.build_parser()"
	@cd $(FRESH) && PYTHONPATH=$(CURDIR)/$(FRESH)/site ./site/bin/xpod --help >/dev/null
	@echo "check-install: wheel builds, installs and 'xpod --help' runs from a fresh copy"

# prometheus + promtool for tests/metrics (promtool check/test, a real Prometheus on loopback):
# Debian's package, installed only when promtool is missing (root here and in CI).
prometheus-tools:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

# PostgreSQL for the store tests (a real server: initdb + pg_ctl into a temp dir, loopback, a
# free port; scheduler/store/pg_local.py): Debian's package, installed only when initdb is missing.
postgresql-tools:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql)

# The documentation site (MkDocs Material, mkdocs.yml) into build/site; `make test` builds it with
# --strict too (tests/docs). docs-ref regenerates docs/reference/*.md from the code.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-ref: install
	$(PY) tools/gen_docs_ref.py

# curl for the README's walkthrough (tests/docs/test_docs_walkthrough.py runs it as written):
# Debian's package, installed only when curl is missing.
walkthrough-tools:
	@command -v curl >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl)

# The one pinned command that regenerates proto/xpod/v1/*_pb2*.py (tests/service checks for drift).
proto: install
	$(PY) proto/generate.py

proto-lint: install
	cd proto && ../$(VENV)/bin/buf lint

clean:
	rm -rf $(VENV) build *.egg-info
