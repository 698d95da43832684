# Every target creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo bench gpu-check man lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	$(MAKE) -C examples/mini PATH="$(CURDIR)/$(BIN):$$PATH" PYTHON="$(CURDIR)/$(BIN)/python"

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The GPU verification: compiled Triton kernels vs the fp64 references, the kernel
# benchmarks' CUDA rows, 50 steps of ViT-B-16 training; one table. Without CUDA: skipped.
gpu-check: $(STAMP)
	TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_check.py

man: $(STAMP)
	$(BIN)/python -m vecap_cli.cli.manpages man

lint: $(STAMP)
	$(BIN)/ruff check vecap_cli tests benchmarks examples
	$(BIN)/ruff format --check vecap_cli tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info
