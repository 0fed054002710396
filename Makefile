# Two commands do all the set-up on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: demo test bench bench-core reliability audit lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Installs exactly the pinned, hash-checked dependencies of requirements.lock, then devmesh itself. Compiled to
# bytecode at install time: where PYTHONDONTWRITEBYTECODE is set, every process (a CLI call, each flow run) would
# otherwise compile Prefect's sources again on import, ~2 s of CPU each time.
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m deployments.demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark: docs/benchmarks.md (~12 min on 2 cores), then docs/reliability.md (~45 min, most of it 1M chunks).
bench: bench-core reliability

bench-core: $(VENV)/.installed
	$(BIN)/python -m bench.run

# Faults, hostile inputs and load; `$(BIN)/python -m bench.reliability --only mixed` refreshes one section.
reliability: $(VENV)/.installed
	$(BIN)/python -m bench.reliability

# Known vulnerabilities of requirements.lock (pip-audit; docs/security.md explains the rules and the accepted list).
audit: $(VENV)/.installed
	$(BIN)/python .ci/audit.py

# Re-resolve the lock file after editing pyproject.toml.
lock: | $(BIN)/python
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .devmesh
