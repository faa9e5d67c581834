# The two commands of the README: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,serve,cloud,dev
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

PACKAGE := models/repository/ckm-prior/0.2.0

# The main job: the edge server starts on the shipped default package; a held-out procedural
# tile, observed through each task's operator, is constructed over gRPC.
demo: $(STAMP)
	$(BIN)/ckm-export verify $(PACKAGE)
	$(BIN)/ckm-data tile --out demo-out/truth.npz
	$(BIN)/ckm-edge demo --repository models/repository --truth demo-out/truth.npz --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow"

bench: $(STAMP)
	$(BIN)/ckm-bench procedural
	$(BIN)/ckm-bench latency
	$(BIN)/ckm-bench load

clean:
	rm -rf $(VENV) demo-out
