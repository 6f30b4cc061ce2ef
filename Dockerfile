# syntax=docker/dockerfile:1
# istio-spiffe-webhook: a small, non-root, read-only-root-friendly image.
#   docker build -t ghcr.io/istio-spiffe-webhook/istio-spiffe-webhook:0.1.0 .
# Both stages use the same base, so the virtualenv copied from the first runs unchanged in
# the second. Pin the base by digest (python:3.11-slim@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the exact locked dependencies, then the package itself -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# Dependencies first (a layer that changes only with the lock file): every package and
# version exactly as tested, each file checked against its hash.
COPY requirements/runtime.lock /src/requirements/runtime.lock
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /src/requirements/runtime.lock
# The package, without dependencies (all installed above). Only what the wheel needs. pip
# compiles every module to bytecode here, so nothing needs writing at run time. (Building
# the wheel fetches the build backend, setuptools, into a throwaway build environment; it
# does not reach the runtime image.)
COPY pyproject.toml README.md /src/
COPY webhook /src/webhook
RUN /opt/venv/bin/pip install --no-deps /src

# --- runtime: the virtualenv and nothing else --------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="istio-spiffe-webhook" \
      org.opencontainers.image.description="Makes Istio sidecars take rotating certificates from a SPIFFE Workload API" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode was compiled at build time; the root filesystem is read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# A numeric non-root user (the Deployment's runAsUser), so runAsNonRoot can verify it.
USER 65532:65532
# 8443: the webhook, /healthz and /readyz over TLS. 9090: Prometheus /metrics.
EXPOSE 8443 9090
ENTRYPOINT ["istio-spiffe-webhook"]
CMD ["serve"]
