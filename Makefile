# The two commands of the README: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,serve,cloud,dev,raytrace,openvino
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test test-slow bench clean raytrace-setup postgres-setup bench-tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

PACKAGE := models/repository/ckm-prior/1.0.0

# The main job: the edge server starts on the shipped default package; a ray-traced tile of a
# held-out city (florence), observed through each task's operator, is constructed over gRPC from
# the observation alone and again given the site (building layout, base station).
demo: $(STAMP)
	$(BIN)/ckm-export verify $(PACKAGE)
	$(BIN)/ckm-data tile --from datasets/sionna-rt-small --split eval --index 0 --out demo-out/truth.npz
	$(BIN)/ckm-edge demo --repository models/repository --truth demo-out/truth.npz --out demo-out

test: $(STAMP) raytrace-setup postgres-setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow"

# The quick benchmarks (minutes). The long ones regenerate their own sections when run:
# ckm-bench solvers (~35 min per dataset on 2 cores: --data procedural --other-precisions fp16 int8, and
# --data datasets/sionna-rt-small), ckm-bench accuracy (~30 min on the 64-tile ray-traced split), ckm-bench sweep --jacobian-free (~10 min),
# ckm-bench sites (~5 min; h2load from `make bench-tools`), ckm-bench raytrace (~4 min), ckm-bench uncertainty (~8 min on 16 validation tiles: a package's
# calibration, --write), ckm-bench shift (~25 min on datasets/sionna-rt-small's 8 held-out tiles);
# on a GPU machine: ckm-bench gpu --time-budget 280 (~5 min on an H100), ckm-bench adapt (~8 min on an H100).
bench: $(STAMP) bench-tools
	$(BIN)/ckm-bench procedural
	$(BIN)/ckm-bench physics
	$(BIN)/ckm-bench latency
	$(BIN)/ckm-bench memory
	$(BIN)/ckm-bench load --clients 1 2 4 8 16 --duration 20
	$(BIN)/ckm-bench load --clients 1 2 4 8 16 --duration 20 --max-batch 1
	$(BIN)/ckm-bench load --clients 1 2 4 8 16 --duration 20 --mix mixed --max-queue 8

# Sionna RT's CPU backend needs LLVM >= 16 (Debian's 14/15 crash drjit's code generation).
# Installs Debian's libllvm19 when it is missing and this user may; otherwise says why and the
# ray-tracing tests skip with that reason. Never fails the build.
raytrace-setup: $(STAMP)
	@if $(BIN)/python -c 'import sys; from ckm_edge.training.raytrace import backend_problem as p; sys.exit(p() is not None)'; then \
		echo "raytrace: backend ready"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q libllvm19 >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libllvm19 >/dev/null 2>&1)) \
			&& echo "raytrace: installed libllvm19" || echo "raytrace: could not install libllvm19; ray-tracing tests will skip"; \
	else \
		echo "raytrace: $$($(BIN)/python -c 'from ckm_edge.training.raytrace import backend_problem as p; print(p())')"; \
	fi

# The site store's tests start a throwaway PostgreSQL cluster: installs Debian's postgresql (server
# binaries only; no cluster is created or started) when initdb is missing and this user may;
# otherwise those tests skip with the reason. Never fails the build.
postgres-setup:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "postgres: server binaries ready"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1)) \
			&& echo "postgres: installed postgresql" || echo "postgres: could not install postgresql; its tests will skip"; \
	else \
		echo "postgres: no initdb and no way to install it; the PostgreSQL store's tests will skip"; \
	fi

# h2load (nghttp2's HTTP/2 load tool): the load generator of `ckm-bench sites`' QueryPoints runs;
# without it the benchmark falls back to Python client processes and says so.
bench-tools:
	@if command -v h2load >/dev/null; then echo "bench-tools: h2load ready"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q --no-install-recommends nghttp2-client >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q --no-install-recommends nghttp2-client >/dev/null 2>&1)) \
			&& echo "bench-tools: installed h2load" || echo "bench-tools: could not install nghttp2-client"; \
	else echo "bench-tools: no h2load and no way to install it"; fi

clean:
	rm -rf $(VENV) demo-out
