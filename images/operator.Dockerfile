# The operator image: `lathe operator` (kopf, the Kubernetes client, the Triton client). No torch,
# ONNX Runtime or OpenVINO: the operator never imports them (tests/images checks every module it does).
# Build from the repository root (BuildKit: the RUN --mount lines need it):
#   DOCKER_BUILDKIT=1 docker build -f images/operator.Dockerfile -t ghcr.io/lathe-dev/lathe-operator:0.1.0 .
# BASE: a Debian bookworm image (CI passes one made with debootstrap: images/build.sh).
ARG BASE=debian:bookworm-slim
# The pip that e2e/setup.sh pins; setuptools and wheel only build Lathe's own wheel (not in the image).
ARG PIP_VERSION=26.3
ARG SETUPTOOLS_VERSION=84.2.1
ARG WHEEL_VERSION=0.48.0

FROM ${BASE} AS runtime
# Debian's Python 3.11 is all the final image needs from apt (no recommends: no compilers).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# uid 65532 gets a passwd entry: kopf names itself user@host (getpass.getuser), which looks it up.
RUN groupadd --gid 65532 lathe \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin lathe

FROM runtime AS venv
ARG PIP_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/lathe && /opt/lathe/bin/pip install pip==${PIP_VERSION}

# The pinned dependencies (images/operator.lock, cut from requirements.lock), wheels only.
FROM venv AS deps
COPY images/operator.lock /tmp/image.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/lathe/bin/pip install --no-deps --only-binary=:all: -r /tmp/image.lock \
 && /opt/lathe/bin/pip uninstall -y setuptools

# Lathe itself as a wheel, built apart so that the final image gets neither setuptools nor the sources.
FROM venv AS wheel
ARG PIP_VERSION
ARG SETUPTOOLS_VERSION
ARG WHEEL_VERSION
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip install --only-binary=:all: pip==${PIP_VERSION} setuptools==${SETUPTOOLS_VERSION} wheel==${WHEEL_VERSION}
WORKDIR /src
COPY pyproject.toml ./
COPY operator ./operator
# pyproject names README.md as the long description: a stub, so that editing the README
# does not rebuild (and re-save) the images.
RUN echo 'Lathe: see README.md in its repository.' > README.md \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM runtime
COPY --from=deps /opt/lathe /opt/lathe
# Last, so a source change rebuilds only this layer (a few hundred KiB).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/lathe/bin/pip install --no-deps --no-index --no-cache-dir /wheels/lathe-*.whl
# The root filesystem is read-only in the pod: everything writable is under /tmp (an emptyDir).
ENV PATH=/opt/lathe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp XDG_CACHE_HOME=/tmp/.cache PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["lathe"]
CMD ["operator"]
