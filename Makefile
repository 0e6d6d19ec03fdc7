# One venv per checkout; torch is pinned through constraints.txt so pip never pulls a multi-GB CUDA wheel
# on a CPU machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

# The tracking server's PostgreSQL driver and the packages of MLflow's basic-auth app (mlflow[auth]), pinned:
# clusters/tracking.py and the tests that start it need them.
TRACKING_PKGS := psycopg2-binary==2.9.13 Flask-WTF==1.2.2

.PHONY: setup test lint demo smoke clean tracking tracking-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(PIP) -c constraints.txt torch==2.13.0
	$(PIP) -c constraints.txt -e ".[dev]"
	$(PIP) --no-deps -r requirements-assets.txt

tracking-deps: setup
	$(PIP) $(TRACKING_PKGS)

# A local MLflow tracking server on PostgreSQL (installed with apt-get when missing, as root), authenticated, on
# 127.0.0.1:5000; then `. runs/tracking/env` and any sweep logs to it. Stop: python clusters/tracking.py stop
tracking: tracking-deps
	$(BIN)/python clusters/tracking.py start --install

test: setup tracking-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=5 -m "not cluster and not faults"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=5 -m cluster
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=5 -m faults

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The main job on the embedded default: real SmolLM2-135M, real Rotten Tomatoes reviews, CPU-sized.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python sweep/run.py --preset demo --out runs/demo

smoke: setup
	HF_HUB_OFFLINE=1 $(BIN)/python sweep/run.py --preset smoke --out runs/smoke

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
