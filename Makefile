PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test demo demo-fleet bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# Most tests wait (hooks, leases, timeouts, S3 round trips): worker processes overlap the waits.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not soak" -n 4 --dist worksteal $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/s3deploy demo

demo-fleet: $(STAMP)
	$(BIN)/s3deploy demo --fleet 5 --workdir .demo-fleet

bench: $(STAMP)
	$(BIN)/python -m benchmarks

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak

clean:
	rm -rf $(VENV) .demo .demo-fleet .pytest_cache .mypy_cache .ruff_cache
