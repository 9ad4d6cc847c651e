# bids_semantoks BIDS App image.
#
#   docker build -t semantoks \
#       --build-arg REVISION="$(git rev-parse HEAD)" --build-arg SOURCE_URL="$(git remote get-url origin)" .
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/fmriprep:/bids:ro -v /data/out:/out semantoks /bids /out participant
#
# Build arguments (none is needed on a machine with internet access):
#   TORCH_VARIANT    cpu (default) or a CUDA wheel variant of download.pytorch.org, e.g. cu128
#   TORCH_INDEX_URL  torch's wheel index (default https://download.pytorch.org/whl/${TORCH_VARIANT}).
#                    pip's --index-url replaces the default index, so a mirror must also hold
#                    torch's dependencies (filelock, typing-extensions, sympy, networkx, jinja2, fsspec...)
#   PIP_INDEX_URL    index of every other package (default: PyPI, or what the pip_conf secret says)
#   BIDS_SEMANTOKS_ATLAS_MIRROR  base URL of an atlas mirror with the data cache's layout (default:
#                    the upstream hosts); files are still checked against their pinned sha256
#   HF_ENDPOINT      HuggingFace endpoint for the official weights (default huggingface.co)
#   WITH_MODEL       1 (default): bake the official weights into the image; 0: atlases only (the
#                    image then says at once that it has no weights: mount a cache or use --model DIR)
#   BASE_IMAGE       python:3.11-slim-bookworm pinned by digest (below)
#   VERSION, REVISION, SOURCE_URL  OCI labels (VERSION must equal pyproject.toml's; a test checks)
# Build secrets (BuildKit `docker build --secret`, `podman build --secret`; optional):
#   --secret id=ca_bundle,src=FILE  extra CA certificates (PEM) trusted by pip and the downloads,
#                    e.g. the host's /etc/ssl/certs/ca-certificates.crt behind a TLS-intercepting proxy
#   --secret id=pip_conf,src=FILE   a pip.conf for the pip steps (index-url, trusted-host, ...)
# Only the builder and data stages see these arguments and secrets: the final image's config
# and history hold none of them (tests/containers/test_image.py checks).
#
# Lines marked "# replay" are run, in order, by tests/containers/test_dockerfile_replay.py in a
# fresh virtualenv (with the ARG/ENV values of their stage), so a missing install step fails CI.
# Keep every install step in such RUN lines.

# Base: python:3.11-slim-bookworm (Debian 12, CPython 3.11). The digest below is the one that
# two independent public Dockerfiles pin for this tag; it could NOT be verified against the
# registry from the machines this file was written on (no registry access). Verify or refresh with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# and override without editing with --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:<digest>.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_INDEX_URL
ENV VIRTUAL_ENV=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"
WORKDIR /src

# torch first (the big layer; cached while the package changes). CPU wheels by default.
# The optional secrets: pip.conf as PIP_CONFIG_FILE; extra CAs appended to the system bundle.
# replay
RUN --mount=type=secret,id=pip_conf,required=false --mount=type=secret,id=ca_bundle,required=false \
    if [ -f /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
    && if [ -f /run/secrets/ca_bundle ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca_bundle > /tmp/ca.pem 2>/dev/null \
            || cp /run/secrets/ca_bundle /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi \
    && python -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir --no-compile "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && rm -f /tmp/ca.pem

# The package and its dependencies (the build context is filtered by .dockerignore).
COPY . .
# replay
RUN --mount=type=secret,id=pip_conf,required=false --mount=type=secret,id=ca_bundle,required=false \
    if [ -f /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
    && if [ -f /run/secrets/ca_bundle ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca_bundle > /tmp/ca.pem 2>/dev/null \
            || cp /run/secrets/ca_bundle /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi \
    && pip install --no-cache-dir --no-compile . \
    && rm -f /tmp/ca.pem \
    && bids_semantoks --version

# What does not run in the image goes: pip, setuptools, test suites, C++ headers, test
# binaries, static libraries; byte-code is kept for the modules the app imports only.
# replay
RUN python docker/slim_venv.py "${VIRTUAL_ENV}" \
    && bids_semantoks --version

# ---------------------------------------------------------------------------------------------
# The data cache: atlases for both template spaces (sha256 checked) and, unless WITH_MODEL=0,
# the official weights; made world-readable so any --user can read them.
FROM builder AS data
ARG WITH_MODEL=1
ARG BIDS_SEMANTOKS_ATLAS_MIRROR
ARG HF_ENDPOINT
ENV BIDS_SEMANTOKS_DATA=/opt/bids_semantoks/data
# from outside the source tree, so the installed package (with its package data) is what runs
WORKDIR /tmp
# replay
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -f /run/secrets/ca_bundle ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca_bundle > /tmp/ca.pem 2>/dev/null \
            || cp /run/secrets/ca_bundle /tmp/ca.pem; \
        export SSL_CERT_FILE=/tmp/ca.pem REQUESTS_CA_BUNDLE=/tmp/ca.pem; \
    fi \
    && if [ "${WITH_MODEL}" = "1" ]; then \
        python -m bids_semantoks.prefetch --data-dir "${BIDS_SEMANTOKS_DATA}"; \
    else \
        python -m bids_semantoks.prefetch --data-dir "${BIDS_SEMANTOKS_DATA}" --skip-model; \
    fi \
    && rm -f /tmp/ca.pem

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=unknown
ARG WITH_MODEL=1
LABEL org.opencontainers.image.title="bids_semantoks" \
      org.opencontainers.image.description="BIDS App for the Brain-Semantoks fMRI foundation model" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Threads: OMP_NUM_THREADS / MKL_NUM_THREADS are deliberately not set here; the app sets them
# from --omp-nthreads. HOME and the matplotlib cache point at /tmp so that any --user works
# (use --tmpfs /tmp with --read-only). Outputs go only to OUTPUT_DIR and the work directory.
# BIDS_SEMANTOKS_IMAGE_HAS_MODEL=0 (WITH_MODEL=0): `--model official` fails at once (exit 66)
# saying the image carries no weights, unless a mounted cache holds them.
ENV VIRTUAL_ENV=/opt/venv \
    BIDS_SEMANTOKS_DATA=/opt/bids_semantoks/data \
    BIDS_SEMANTOKS_ATLAS_DIR=/opt/bids_semantoks/data/atlases \
    BIDS_SEMANTOKS_IMAGE_HAS_MODEL=${WITH_MODEL} \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIDS_SEMANTOKS_CONTAINER_TYPE=docker \
    BIDS_SEMANTOKS_CONTAINER_IMAGE=semantoks:${VERSION}
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"

COPY --from=builder /opt/venv /opt/venv
COPY --from=data /opt/bids_semantoks/data /opt/bids_semantoks/data
WORKDIR /tmp

ENTRYPOINT ["/opt/venv/bin/bids_semantoks"]
