# syntax=docker/dockerfile:1
# Two images from one build (docs/images.md: podman, buildah, offline builds):
#   docker build --target node     -t ghcr.io/continuum/federation-node:0.1.0 .
#   docker build --target operator -t ghcr.io/continuum/federation-operator:0.1.0 .
# The builder stage builds the wheel and installs it (with its dependencies, from
# wheels) into a virtualenv; the final stages copy only that virtualenv onto a clean
# python:3.11-slim, so no compiler, pip cache or source tree reaches them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies' wheels first, from pyproject.toml alone: that layer is reused until the
# dependencies change, whatever happens to the sources.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [p["optional-dependencies"][e] for e in ("operator", "backup")]; \
print("\n".join(sum(extras, p["dependencies"])))' > /requirements.txt \
 && python -m pip wheel --wheel-dir /wheels --requirement /requirements.txt
COPY README.md ./
COPY node_image/ node_image/
COPY operator/ operator/
RUN python -m pip wheel --wheel-dir /wheels --no-deps .
# One virtualenv per image, without pip in it (the builder's pip installs into it); the
# final stages run the same base image, so the paths hold.
RUN python -m venv --without-pip /opt/node \
 && python -m pip --python /opt/node/bin/python install --no-index --find-links /wheels \
      "continuum-federation[backup]" \
 && python -m venv --without-pip /opt/operator \
 && python -m pip --python /opt/operator/bin/python install --no-index --find-links /wheels \
      "continuum-federation[operator]" \
 && /opt/node/bin/python -m compileall -q /opt/node \
 && /opt/operator/bin/python -m compileall -q /opt/operator

# ---- shared runtime base -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# No package installer at run time: remove the base image's pip (and setuptools/wheel),
# and the pip wheel ensurepip keeps to reinstall it.
# A fixed, non-root uid/gid (the Helm chart and the operator's pods use 10001) and the
# node's data and TLS directories, writable by it when a volume is not mounted there.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && rm -rf "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/ensurepip/_bundled" \
 && groupadd --system --gid 10001 continuum \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin continuum \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/continuum /etc/continuum/tls

# ---- node ---------------------------------------------------------------------------------
FROM runtime AS node
LABEL org.opencontainers.image.title="continuum-federation-node" \
      org.opencontainers.image.description="A Continuum Federation node (Raft, SWIM, CRDT replication over mTLS)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/node /opt/node
ENV PATH=/opt/node/bin:$PATH \
    CONTINUUM_DATA_DIR=/var/lib/continuum \
    CONTINUUM_TLS_DIR=/etc/continuum/tls
USER 10001:10001
# 7000: mutual-TLS peer protocol and API; 8080: /healthz, /readyz, /metrics.
EXPOSE 7000 8080
VOLUME ["/var/lib/continuum"]
ENTRYPOINT ["continuum-federation", "node", "run"]

# ---- operator -----------------------------------------------------------------------------
FROM runtime AS operator
LABEL org.opencontainers.image.title="continuum-federation-operator" \
      org.opencontainers.image.description="Kubernetes operator (kopf) for FederationCluster resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/operator /opt/operator
ENV PATH=/opt/operator/bin:$PATH
USER 10001:10001
# 8080: kopf liveness (/healthz); 9090: Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["continuum-operator"]
