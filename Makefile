# The two commands of the README: `make run` (the pipeline on the embedded default) and `make test`.
# Each creates .venv from requirements.lock on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
SHARED_MIRROR := $(wildcard $(CURDIR)/../shared/data/fashion-mnist)
# Use the workplace's copy of the data when there is one; otherwise the mirror chain decides.
export FASHION_MNIST_MIRROR ?= $(SHARED_MIRROR)
# The pinned upstream schemas that `fashion-pipeline lint` validates against (see README).
export FASHION_PIPELINE_SCHEMAS ?= $(wildcard $(CURDIR)/../shared/schemas)

# The TensorFlow of the pinned TF Serving runtimeVersion (steps/targets/kserve.py), in a side
# environment: tests/model/test_serving_runtime.py loads the exported SavedModel there as TF Serving would.
SERVING_TF_VENV ?= .venv-tf220
SERVING_TF_STAMP := $(SERVING_TF_VENV)/.installed-tf2.20

.PHONY: run test test-fast lint install clean serving-tf

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required (found %s); set PYTHON=python3.11" % sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# tensorflow-cpu has wheels for x86_64 only; aarch64 takes tensorflow (the same version).
$(SERVING_TF_STAMP):
	$(PYTHON) -m venv $(SERVING_TF_VENV)
	$(SERVING_TF_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVING_TF_VENV)/bin/pip install --quiet \
		"tensorflow-cpu==2.20.*; platform_machine == 'x86_64'" "tensorflow==2.20.*; platform_machine != 'x86_64'"
	touch $@

serving-tf: $(SERVING_TF_STAMP)

run: $(STAMP)
	$(BIN)/fashion-pipeline run $(RUN_ARGS)

test: $(STAMP) $(SERVING_TF_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/fashion-pipeline render --check
	$(BIN)/fashion-pipeline lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast lane: pure logic (tests/unit), under a minute; `make test` runs every lane.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(SERVING_TF_VENV) outputs
