# syntax=docker/dockerfile:1.7
# saerec: multi-stage build. The build stage resolves dependencies into a virtualenv
# (torch from PyTorch's CPU wheel index, never a CUDA build); the runtime stage copies
# only that venv and the source, runs as a non-root user, and has no compilers.
#
#   docker build -t saerec .
#
# Build arguments, for builds away from Docker Hub and download.pytorch.org (mirrors,
# air-gapped hosts; scripts/container-check.sh uses them):
#   BASE_IMAGE       a Python 3.11 image on Debian bookworm with `python` and venv
#   TORCH_INDEX_URL  a PEP 503 index that serves the CPU build of torch
#   PIP_INDEX_URL    the index of everything else (PyPI or a mirror of it)
#   TORCH_VERSION    the torch release installed (pyproject.toml accepts a range)
#   PIP_CERT         a CA bundle for pip where TLS is re-signed by a proxy

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, in its own layer (it changes rarely): the CPU index's build (2.13.0+cpu ranks
# above PyPI's CUDA 2.13.0); pyproject.toml's range is then already met and `pip install .`
# never reaches for a CUDA build
RUN python -m venv /opt/venv \
 && pip install --extra-index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . && pip uninstall -y pip setuptools wheel 2>/dev/null; \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + ; \
    find /opt/venv -name 'tests' -path '*site-packages/*/tests' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="saerec" \
      org.opencontainers.image.description="Movie recommendations from a stacked autoencoder"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/var/lib/saerec/models \
    LOG_JSON=true \
    ENVIRONMENT=production
RUN groupadd --system --gid 10001 saerec \
 && useradd --system --uid 10001 --gid saerec --home-dir /app --shell /usr/sbin/nologin saerec \
 && mkdir -p /var/lib/saerec/models \
 && chown -R saerec:saerec /var/lib/saerec
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Alembic's scripts live beside the package; `saerec migrate` finds them from /app.
COPY --chown=saerec:saerec alembic.ini ./
COPY --chown=saerec:saerec migrations ./migrations
USER 10001:10001
VOLUME ["/var/lib/saerec/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["saerec", "serve", "--host", "0.0.0.0", "--port", "8000"]
