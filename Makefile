# One virtual environment at .venv in the checkout serves every target.
VENV ?= .venv
# Set where PyPI's default torch wheel is a CUDA build, e.g. https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lint test demo clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# TensorRT-RTX (rtx) is part of CI: its builder makes real plans on this CPU-only machine.
	$(PY) -m pip install -q -e ".[export,ort,music,test,rtx,verify,serve,ray,ui]"
	# The page's synthesizer without pyaudio (live playback, unused; it needs PortAudio headers to build).
	$(PY) -m pip install -q --no-deps tinysoundfont==0.3.7
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/notagen-trt generate --out out/demo

clean:
	rm -rf $(VENV) out .pytest_cache
