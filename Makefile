# The README's two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk; pin it so pip never pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: install demo test lint bench nnunet-env clean

$(BIN)/h2aseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[test]" $(TORCH_PIN)
	touch $@

install: $(BIN)/h2aseg

demo: install
	$(BIN)/h2aseg demo --out runs/demo

test: install nnunet-env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/speed.py

# nnU-Net v2 for the quality benchmark's reference row, in an environment of its own: its
# dependencies (torchvision through timm) break Lightning's import in h2aseg's environment.
NNUNET_VENV := .venv-nnunet
NNUNET_PIN := nnunetv2==2.6.4

$(NNUNET_VENV)/bin/nnUNetv2_train:
	$(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/pip install --quiet $(TORCH_PIN)
	$(NNUNET_VENV)/bin/pip install --quiet $(NNUNET_PIN) $(TORCH_PIN)

nnunet-env: $(NNUNET_VENV)/bin/nnUNetv2_train

clean:
	rm -rf $(VENV) $(NNUNET_VENV) runs .pytest_cache
