# QueryBase developer entry points. `make demo` and `make test` work on a fresh Debian machine:
# they install what is missing (apt-get as root, Python packages into .venv) and nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := postgresql postgresql-contrib postgresql-client mariadb-server mariadb-client \
	libpostgresql-jdbc-java libmariadb-java default-jdk-headless
PYTEST_ARGS ?=

BENCH_ARGS ?=

FUZZ_MESSAGES ?= 1000000
FUZZ_ARGS ?=

.PHONY: bootstrap system-packages venv demo test lint format clean bench-pg bench-mysql fuzz

bootstrap: system-packages venv

# Install only the Debian packages that are not there yet; `apt-get update` only when needed.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Debian's python3 needs python3-venv for `-m venv`; install it only if venv creation fails.
$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }

# Reinstall only when the dependency list changed.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: bootstrap
	$(PY) deploy/demo/demo.py

test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

# pgbench -S against direct PostgreSQL, PgBouncer and QueryBase; see benchmarks/README.md.
bench-pg: bootstrap
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || { \
	  echo "installing pgbouncer"; SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends pgbouncer; }
	$(PY) benchmarks/bench_pg.py $(BENCH_ARGS)

# sysbench oltp_point_select / oltp_read_only against direct MariaDB and QueryBase; see benchmarks/README.md.
bench-mysql: bootstrap
	@command -v sysbench >/dev/null || { \
	  echo "installing sysbench"; SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends sysbench; }
	$(PY) benchmarks/bench_mysql.py $(BENCH_ARGS)

# Long wire fuzzing of both listeners against a real `serve` (FUZZ_MESSAGES mutated messages, default
# one million; FUZZ_SEED, FUZZ_WORKERS, FUZZ_PROTOCOLS=pg,my); see docs/fuzzing.md. Exit status 1 on any finding.
fuzz: bootstrap
	$(PY) tests/fuzz/run.py --messages $(FUZZ_MESSAGES) $(FUZZ_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
