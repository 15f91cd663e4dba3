# anomaly — the two commands a user needs are `make train` and `make test`.
# Both create the virtual environment in .venv/ through `make install` when it is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-e2e lint bench bench-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m anomaly.train $(ARGS)

# One pytest-xdist worker per core; --dist loadfile keeps each test file (and its module fixtures) on one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile $(ARGS)

# The slow end-to-end runs (marker e2e): every README command that can run here, as printed, in a subprocess.
# Commands that share a working directory (xdist_group) stay on one worker, in README order.
test-e2e: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup -m e2e $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

# The peer the benches compare with (anomalib) goes into .bench-deps/, never into .venv.
BENCH_DEPS := .bench-deps
bench-deps: $(STAMP)
	test -d $(BENCH_DEPS)/anomalib || $(PY) -m pip install --quiet --no-deps --target $(BENCH_DEPS) \
		anomalib==2.7.0 jsonargparse tifffile pandas python-dateutil six pytz tzdata matplotlib contourpy \
		cycler fonttools kiwisolver pyparsing scikit-image imageio lazy_loader networkx einops FrEIA

bench: bench-deps
	$(PY) bench/startup.py
	$(PY) bench/padim.py
	$(PY) bench/metrics.py

# Every paper preset at full size on CUDA (random weights, a generated tree): speed and peak memory per preset,
# then the suite's CUDA-only tests; under 8 minutes on one H100. Without CUDA: checks the presets compose.
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(ARGS)

clean:
	rm -rf outputs multirun lightning_logs wandb .pytest_cache build *.egg-info
