# `make test` on a fresh machine: creates .venv, installs torch first (TORCH_SPEC from the default index: a CPU build
# only where that index serves CPU wheels; from pypi.org on Linux a multi-GB CUDA build), then the package with its
# test extras, then runs pytest.
VENV ?= .venv
PY := $(VENV)/bin/python
# Override for another platform, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

.PHONY: install test test-all lint generate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The main job: a video from a prompt with the shipped model (or, until one ships, an untrained tiny pipeline that
# the CLI builds and says so). Writes outputs/video.mp4 and outputs/video.gif.
PROMPT ?= a red circle moves from left to right
MODEL ?=
generate: install
	mkdir -p outputs
	$(VENV)/bin/spacetime-generate "$(PROMPT)" $(if $(MODEL),--model "$(MODEL)",) --output outputs/video.mp4 --gif

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS) -m "slow or not slow"

lint: install
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
