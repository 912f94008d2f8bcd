# syntax=docker/dockerfile:1
# The reconciler daemon as a container image (README.md, "Running in a cluster").
#
#   docker build -t reconciler .
#
# Build arguments and contexts:
#   --build-arg BASE=IMAGE    a Debian-based image with Python >= 3.11 as python3 (default: python 3.11 slim,
#                             pinned by digest below);
#                             git, gpg, openssh-client, tini and ca-certificates are installed only if it lacks them
#   --build-context extra-ca=DIR
#                             extra CA certificates (PEM files named *.crt) added to the system bundle, for
#                             TLS-intercepting proxies in front of the package index, the git host or AWS
#   --build-arg PIP_INDEX_URL=... / PIP_EXTRA_INDEX_URL=... / PIP_TRUSTED_HOST=...
#                             another package index; seen only by the builder stage, not kept in the final image
#
# The final image runs as the numeric user 10001 under tini, with a HEALTHCHECK on /healthz, and keeps
# its state (local backend, records, the clone of a remote --repo) in /var/lib/reconciler.  It runs with
# a read-only root filesystem given two writable mounts: /var/lib/reconciler and /tmp.  Dependencies are
# installed at the versions of constraints.txt, so that a rebuild gets the same ones.

# The base image, by tag and by the digest of its multi-platform index: a rebuild gets the same bytes.
# To bump it: `docker buildx imagetools inspect python:3.11-slim-bookworm` (or `skopeo inspect
# docker://docker.io/library/python:3.11-slim-bookworm`), then put the version and the index's
# "Digest:" here, and run tests/container/run.sh with --build-arg BASE unset.
ARG BASE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# Empty unless the build names a directory for it (--build-context extra-ca=DIR).
FROM scratch AS extra-ca

# ---------------------------------------------------------------- runtime
# The base image plus what the daemon runs at run time; shared by the builder and the final image.
FROM ${BASE} AS runtime
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
COPY --from=extra-ca / /usr/local/share/ca-certificates/extra/
# hadolint ignore=DL3008
RUN missing=(); \
    for pkg in ca-certificates git gpg openssh-client tini; do \
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg"); \
    done; \
    if (( ${#missing[@]} )); then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    update-ca-certificates
# Python, pip, git (libcurl) and boto3 all trust the system bundle, extra CAs included.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

# ---------------------------------------------------------------- builder
FROM runtime AS builder
# Unset unless given, so that pip keeps its own defaults.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python3 -m venv /opt/reconciler
# Dependencies first, from pyproject.toml and constraints.txt alone, so that a change to the code reuses
# this layer; the versions are the lock's.
COPY pyproject.toml constraints.txt ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/reconciler/bin/pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY reconciler/ reconciler/
RUN /opt/reconciler/bin/pip install --no-cache-dir --no-deps . \
    && /opt/reconciler/bin/reconciler --version

# ------------------------------------------------------------------ final
FROM runtime
ARG UID=10001
LABEL org.opencontainers.image.title="reconciler" \
      org.opencontainers.image.description="GitOps for AWS API Gateway stages and Lambda aliases" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="README.md, Running in a cluster" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
RUN groupadd --gid "${UID}" reconciler \
    && useradd --uid "${UID}" --gid "${UID}" --home-dir /home/reconciler --create-home \
        --shell /usr/sbin/nologin reconciler \
    && install -d -o "${UID}" -g "${UID}" -m 0750 /var/lib/reconciler
COPY --from=builder /opt/reconciler /opt/reconciler
ENV PATH=/opt/reconciler/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECONCILER_STATE_DIR=/var/lib/reconciler \
    RECONCILER_LISTEN=0.0.0.0:8080 \
    RECONCILER_LOG_FORMAT=json \
    TINI_SUBREAPER=1
USER ${UID}:${UID}
WORKDIR /var/lib/reconciler
EXPOSE 8080
# The daemon and the HEALTHCHECK both read the port from RECONCILER_LISTEN (the command passes no
# --listen), so `--env RECONCILER_LISTEN=0.0.0.0:9090` moves both.  A --listen given in the command
# (as the Kubernetes manifests do) must name the same port as RECONCILER_LISTEN.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ['RECONCILER_LISTEN'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["reconciler", "run"]
