# Two commands for a fresh machine: `make demo` and `make test`. Both install into .venv first;
# the install is skipped while setup.cfg, the constraints and the version are unchanged (stamp keyed by hash).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
HASH    := $(shell cat setup.cfg requirements/constraints.txt spikeseg/__init__.py | sha256sum | cut -c1-16)
STAMP   := $(VENV)/.installed-$(HASH)
# Declared deps of these two (torchvision/torchaudio) do not load beside CPU torch: --no-deps.
NODEPS  := spikingjelly==2.0.0 neurobench==2.3.0
PIP     := $(BIN)/pip install -q --disable-pip-version-check -c requirements/constraints.txt

.PHONY: install test demo bench arm64-check clean

install: $(STAMP)

$(STAMP): setup.cfg requirements/constraints.txt spikeseg/__init__.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	@echo "installing spikeseg and its pinned dependencies into $(VENV) (log: $(VENV)/install.log)"
	@( $(PIP) -e '.[train,test,cluster]' && $(PIP) --no-deps $(NODEPS) ) > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $@

test: install
	@$(BIN)/python -m pytest

demo: install
	@$(BIN)/python -m spikeseg.benchmarks.demo --out demo

# Cross-built linux-aarch64 package, installed and run under qemu user emulation (root, minutes).
arm64-check: install
	@bash export/arm64_check.sh

clean:
	rm -rf $(VENV) demo
