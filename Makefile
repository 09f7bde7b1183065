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

.PHONY: install test demo docs bench pins schema template arm64-check gpu-wheels gpu-check clean

install: $(STAMP)

$(STAMP): setup.cfg requirements/constraints.txt spikeseg/__init__.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	@echo "installing spikeseg and its pinned dependencies into $(VENV) (log: $(VENV)/install.log)"
	@( $(PIP) -e '.[train,test,cluster,prepare]' && $(PIP) --no-deps $(NODEPS) ) > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $@

# Two workers (pytest-xdist); the session's trained bundles and prepared scanner case are built
# once and shared between them (tests/helpers.py: shared).
test: install
	@$(BIN)/python -m pytest -n 2

demo: install
	@$(BIN)/python -m spikeseg.benchmarks.demo --out demo

# The documentation site into site/ (mkdocs build --strict: a broken link or reference fails).
DOCS_STAMP := $(VENV)/.docs-$(HASH)
docs: install $(DOCS_STAMP)
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site && echo "documentation site: site/index.html"

$(DOCS_STAMP):
	@$(PIP) -e '.[docs]' > $(VENV)/docs-install.log 2>&1 || { tail -n 40 $(VENV)/docs-install.log; exit 1; }
	@touch $@

# The runtime's exact pins shipped inside the package (runtime/runtime_pins.txt), regenerated from
# setup.cfg and requirements/constraints.txt after either changes (a test fails until then).
pins: install
	@$(BIN)/python -c 'from spikeseg.export.package import write_checkout_pins as w; print(w())'

# The bundle manifest's JSON Schema (runtime/manifest.schema.json, shipped) and docs/bundle-format.md,
# both generated from the types that read and write manifests (a test fails while either is stale).
schema: install
	@$(BIN)/python -m spikeseg.runtime.manifest --schema runtime/manifest.schema.json --page docs/bundle-format.md

# spikeseg prepare's registration template (prepare/template/), rebuilt from nilearn's MNI152 (a test
# fails when the shipped files differ from a fresh build).
template: install
	@$(BIN)/python -c 'from spikeseg.training.phantoms import write_prepare_template as w; print(*w(), sep="\n")'

# Cross-built linux-aarch64 package, installed and run under qemu user emulation (root, minutes).
arm64-check: install
	@bash export/arm64_check.sh

# The GPU check (benchmarks/gpu_check.py). `make gpu-wheels` here fetches what a GPU machine with
# no network lacks (.gpu-wheels/, about 15 MB); `make gpu-check` there installs them beside that
# machine's own CUDA torch and runs the check into $(GPU_OUT); on a machine without CUDA it is
# the dry run (CPU, tiny preset, seconds of budget).
GPU_OUT    ?= gpu-check
GPU_PY     ?= 3.12
GPU_WHEELS := .gpu-wheels
GPU_SITE   := .gpu-site
GPU_PIP    := python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE)

gpu-wheels: install
	@$(BIN)/python -m spikeseg.benchmarks.gpu_wheels --dest $(GPU_WHEELS) --python $(GPU_PY)

gpu-check:
	@if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then \
		ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1 || { echo "no $(GPU_WHEELS)/: run make gpu-wheels first and carry it"; exit 2; }; \
		$(GPU_PIP) $(GPU_WHEELS)/*.whl && { $(GPU_PIP) --no-build-isolation . >/dev/null 2>&1 || true; } && \
		PYTHONSAFEPATH=1 PYTHONPATH=$(CURDIR)/$(GPU_SITE):$(CURDIR) PYTHONUNBUFFERED=1 \
			python3 -m spikeseg.benchmarks.gpu_check --out $(GPU_OUT); \
	else \
		$(MAKE) --no-print-directory install && $(BIN)/python -m spikeseg.benchmarks.gpu_check --dry-run --out $(GPU_OUT); \
	fi

clean:
	rm -rf $(VENV) demo site
