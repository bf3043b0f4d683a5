# Two commands for a fresh machine: `make run` (API + Redis + one worker on the tiny default
# checkpoint) and `make test`. Everything else here is what those two need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
DEVICE ?= cpu
TLS ?= 0
MODEL ?=
WORKERS ?=
SLOTS ?=
API_WORKERS ?= 1
JS_DIR := tests/e2e/js

LOADTEST_URL ?= http://$(HOST):$(PORT)
LOADTEST_ARGS ?= --concurrency 8 --requests 200 --status stream

# The oldest transformers the project allows (pyproject: transformers>=4.57,<6), in a venv of its own: `make test`
# runs the model tests there too, so a version the project allows is a version it tests.
TRANSFORMERS_457_SPEC ?= transformers==4.57.*
VENV_TRANSFORMERS_457 := .run/venv-transformers-4.57
PY_TRANSFORMERS_457 := $(VENV_TRANSFORMERS_457)/bin/python
TESTS_TRANSFORMERS_457 ?= tests/unit/model

.PHONY: run test install redis wrk nginx browser js-deps deploy-tools lock tiny verify bench bench-model bench-gpu bench-load bench-api bench-webhooks bench-loadtest loadtest bench-cli chaos lint format
.PHONY: install-transformers457 test-transformers457 py-clients test-containers

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[model,test]"
	touch $@

install: $(VENV)/.installed

# Rebuilt only when pyproject.toml changes (the stamp), like .venv; the same torch pin, from the local wheel.
$(VENV_TRANSFORMERS_457)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TRANSFORMERS_457)
	$(PY_TRANSFORMERS_457) -m pip install -q --upgrade pip
	$(PY_TRANSFORMERS_457) -m pip install -q "$(TORCH_SPEC)"
	$(PY_TRANSFORMERS_457) -m pip install -q -e ".[model]" "$(TRANSFORMERS_457_SPEC)" "pytest>=8" "pytest-timeout>=2.3"
	touch $@

install-transformers457: $(VENV_TRANSFORMERS_457)/.installed

# A private redis-server is started by the project itself; only the binary is needed.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "redis-server not found: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# Debian's docker-compose validates docker/compose.yaml offline (tests/deploy); no Docker daemon needed.
deploy-tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
		echo "docker-compose not found: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; }

# The images and docker/compose.yaml for real (issue 21; README, "Containers"): Docker from Debian when missing,
# a private dockerd under .run/containers/ when none answers, base images from Debian packages without a
# registry, both targets, compose with a simulated worker, checks through nginx, `down && up`, `import torch`.
# Needs no venv. SKIP_GPU_IMAGE=1 skips the GPU worker image; KEEP_IMAGES=1 keeps the images for a rerun.
test-containers:
	bash tests/containers/run.sh

# The images' lock files (requirements/*.txt, pinned with hashes) from pyproject.toml, for Linux x86_64.
LOCK_FLAGS := --no-config --index-url https://pypi.org/simple --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --quiet
lock: install
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements/api.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra model -c requirements/constraints.txt $(LOCK_FLAGS) \
		-o requirements/worker.txt
	$(VENV)/bin/uv pip compile requirements/build.in -c requirements/worker.txt $(LOCK_FLAGS) -o requirements/build.txt

# nginx for tests/deploy/test_nginx.py (the shipped nginx.conf in front of the real API): Debian's package
# (about 0.5 MB) unpacked into .run/nginx: nothing installed system-wide, no service started.
NGINX_DIR := .run/nginx
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x $(NGINX_DIR)/usr/sbin/nginx || { \
		echo "nginx not found: unpacking Debian's nginx package into $(NGINX_DIR)"; \
		mkdir -p $(NGINX_DIR) && cd $(NGINX_DIR) && \
		{ apt-get download -qq nginx 2>/dev/null || { apt-get update -qq && apt-get download -qq nginx; }; } && \
		dpkg-deb -x nginx_*.deb . && rm -f nginx_*.deb; }

# The HTTP load generator of `make bench-api`.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "wrk not found: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

# The playground's browser tests drive Debian's chromium through its chromedriver (headless).
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
		echo "chromium or chromedriver not found: installing them with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --silent
	touch $@

js-deps: $(JS_DIR)/node_modules/.installed

# The older fal-client releases of the e2e version matrix (tests/e2e/fal-client-versions.txt), one folder each,
# installed without dependencies: the test venv's httpx, httpx-sse, msgpack and websockets serve them all
# (tests/e2e checks they satisfy each release's own requirements). A stamp per release: each is installed once.
FAL_CLIENT_VERSIONS := $(shell grep -o '^[0-9][0-9.]*' tests/e2e/fal-client-versions.txt)
FAL_CLIENTS_DIR := .run/fal-clients

$(FAL_CLIENTS_DIR)/%/.installed: | $(VENV)/.installed
	rm -rf $(FAL_CLIENTS_DIR)/$*
	$(PY) -m pip install -q --no-deps --target $(FAL_CLIENTS_DIR)/$* "fal-client==$*"
	touch $@

py-clients: $(FAL_CLIENT_VERSIONS:%=$(FAL_CLIENTS_DIR)/%/.installed)

run: install redis
	$(PY) -m stack --host $(HOST) --port $(PORT) --device $(DEVICE) \
		$(if $(filter 1 true yes,$(TLS)),--tls) $(if $(MODEL),--model $(MODEL)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(SLOTS),--slots $(SLOTS)) --api-workers $(API_WORKERS)

# The main suite's cross-version test runs the 4.57 side in that venv, so it is built first.
test: install install-transformers457 redis js-deps py-clients deploy-tools browser nginx
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PYTEST_TRANSFORMERS_457)

# The model tests under transformers 4.57 (their cross-version test runs the 5.x side in .venv).
PYTEST_TRANSFORMERS_457 = $(PY_TRANSFORMERS_457) -m pytest -q -p no:cacheprovider $(TESTS_TRANSFORMERS_457)
test-transformers457: install install-transformers457
	$(PYTEST_TRANSFORMERS_457)

tiny: install
	$(PY) -m model.tiny weights/tiny-64x --parallel-num 64
	$(PY) -m model.tiny weights/tiny-16x --parallel-num 16

# Check a downloaded checkpoint (either layout) before serving it: make verify MODEL=/srv/weights/BitDance-14B-64x
verify: install
	@test -n "$(MODEL)" || { echo "usage: make verify MODEL=/path/to/checkpoint"; exit 2; }
	$(PY) -m model.verify $(MODEL)

bench: bench-model bench-load bench-api bench-cli

bench-model: install
	TORCH_SPEC="$(TORCH_SPEC)" $(PY) -m bench.model_speed

# BitDance-14B-64x shapes, random bf16 weights built on the GPU; with BITDANCE_OFFICIAL_REPO also upstream's pipeline.
bench-gpu: install
	TORCH_SPEC="$(TORCH_SPEC)" $(PY) -m bench.model_speed --devices cuda --full-size

# Host memory to load a >= 1 GB random checkpoint, as a multiple of its size (goal <= 1.2)
bench-load: install
	$(PY) -m bench.load_memory

bench-api: install redis wrk
	$(PY) -m bench.api_capacity
	$(PY) -m bench.recovery_sweep
	$(PY) -m bench.queue_positions

# Honest webhooks' delay (p50/p99) with 10 tarpit receivers holding their connections, and without.
bench-webhooks: install redis
	$(PY) -m bench.webhook_isolation

# Drive a running server (make run ...) or any fal-compatible endpoint: see README, "Load testing".
loadtest: install
	$(PY) -m loadtest --url $(LOADTEST_URL) $(LOADTEST_ARGS)

# The goals benchmark of the simulated fleet: 64 slots, 2 s profile, 500 status-stream clients (phase ab);
# 300 clients at once on 320 slots (burst); 300 emulated GPUs for FLEET_S seconds (fleet). PHASES picks
# among ab,burst,fleet; WORKERS=N spreads the burst's and the fleet's slots over N worker processes.
PHASES ?= ab,burst,fleet
FLEET_S ?= 300
bench-loadtest: install redis
	$(PY) -m bench.fleet_goals --phases $(PHASES) --fleet-duration $(FLEET_S) $(if $(WORKERS),--workers $(WORKERS))

# bitdance-generate against a worker on the same input (generation seconds, one run)
bench-cli: install redis
	$(PY) -m bench.cli_speed --torch-default-threads

# Crash the worker N times, restart Redis and the API under load; fails if a request is lost or stuck.
N ?= 20
chaos: install redis
	$(PY) -m stack.chaos --kills $(N)

lint: install
	$(VENV)/bin/ruff check core server worker model stack loadtest bench tests
	$(VENV)/bin/ruff format --check core server worker model stack loadtest bench tests
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format core server worker model stack loadtest bench tests
	$(VENV)/bin/ruff check --fix core server worker model stack loadtest bench tests
