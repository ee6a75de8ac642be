# syntax=docker/dockerfile:1
# One image runs the API (gunicorn, the default command), the Celery worker, the sweeper and the migrate step;
# docker-compose.yml picks the command. The only thing that differs between the CPU image and the GPU worker's
# image is which build of torch is installed:
#
#   docker build -t diffusion-service:cpu .                                # torch 2.13.0+cpu
#   docker build -t diffusion-service:gpu --build-arg TORCH_VARIANT=cu130 .  # torch 2.13.0+cu130
#
# TORCH_VARIANT names a PyTorch wheel index, ${TORCH_INDEX}/${TORCH_VARIANT}: `cpu`, or a CUDA build of the
# pinned torch that the host's NVIDIA driver supports (cu126, cu128, cu130 …; see the index for which exist).
# The GPU variant is cu130 (CUDA 13.0, NVIDIA driver 580 or newer), the CUDA that scripts/gpu_check.sh is written
# for (docs/gpu.md); compose's worker builds it and runs it in fp16 with SDPA attention. CUDA wheels bring the CUDA
# runtime, cuDNN and Triton as pip packages, so no CUDA base image is needed: the NVIDIA Container Toolkit on the
# host mounts the driver into the container, and g++ below also serves Triton's kernel launchers (torch.compile).

ARG PYTHON_VERSION=3.11

# --- Stage 1: a virtualenv with every dependency, built where pip's downloads and caches stay behind.
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.txt .
# torch first, at requirements.txt's exact pin, from the PyTorch index for the variant (PyPI's Linux torch is a
# CUDA build, several GB the CPU image does not need). `torch==2.13.0` then counts as met by 2.13.0+<variant>,
# so the second install leaves it alone; the last line fails the build if it did not.
RUN set -eux; \
    grep -E '^torch==' requirements.txt > torch-requirement.txt; \
    pip install --index-url "${TORCH_INDEX}/${TORCH_VARIANT}" -r torch-requirement.txt; \
    pip install -r requirements.txt; \
    python -c "import sys, torch; print(torch.__version__); sys.exit(not torch.__version__.endswith('+${TORCH_VARIANT}'))"

# --- Stage 2: the runtime: the virtualenv, the code, a non-root user and the default model.
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=diffusion_api.settings.production \
    VAR_DIR=/app/var \
    HF_HOME=/app/var/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# A C++ compiler for torch.compile (GENERATOR_COMPILE): inductor writes and builds C++ kernels at worker start.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY diffusion_api/ diffusion_api/
COPY generator/ generator/
COPY worker/ worker/
COPY deploy/ deploy/
# var/media exists in the image so a new named volume mounted there is owned by the app user (uploads, job inputs).
RUN mkdir -p var/models var/media var/compile-cache && chown -R app:app var
# The built-in model (trained on shapes64; MODEL_CARD.md) in the models folder, beside the tiny one made below.
COPY --chown=10001:10001 models/shapes64/ var/models/shapes64/
# Its style LoRA (MODEL_CARD.md): `python manage.py scan_models /app/var/models` registers both.
COPY --chown=10001:10001 models/loras/ var/models/loras/
# A numeric user, so platforms that enforce "not root" (Kubernetes runAsNonRoot) can check it.
USER 10001:10001
# The tiny random model, made at build time so the API (which reads the model's JSON configs to validate requests)
# and the worker both have it from their first start. Compose mounts the `models` volume on var/models; Docker
# fills a new, empty named volume from the image's folder, and a real model copied into the volume is seen by
# the API and every worker alike.
RUN python -m generator make-tiny --out var/models/tiny

EXPOSE 8000
# Plain HTTP on the container's own port: /api/v1/health/ is exempt from SECURE_SSL_REDIRECT.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "deploy/healthcheck.py", "http://127.0.0.1:8000/api/v1/health/"]
# Workers: WEB_CONCURRENCY (gunicorn reads it). Heartbeat files on tmpfs: overlay filesystems can stall them.
CMD ["gunicorn", "diffusion_api.asgi:application", "--worker-class", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
