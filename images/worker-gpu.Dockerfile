# The GPU worker image: `lathe worker` for target.device gpu (torch with CUDA, ONNX Runtime, OpenVINO,
# NNCF, NVIDIA ModelOpt's ONNX tools and TensorRT's Python bindings) on NVIDIA's TensorRT image.
# NOT BUILT OR TESTED by this project's CI: the base comes from NVIDIA's registry (nvcr.io), which its
# machines cannot reach, and they have no GPU. images/README.md says what is assumed here.
# Build from the repository root (BuildKit: the RUN --mount lines need it):
#   DOCKER_BUILDKIT=1 docker build -f images/worker-gpu.Dockerfile -t ghcr.io/lathe-dev/lathe-worker-gpu:0.1.0 .
# The backend (operator/lathe/worker/backends/tensorrt.py) is written and type-checked against TensorRT 10.13:
# 25.08 is the TensorRT container of August 2025, when TensorRT 10.13.2 came out (its release notes could not be
# read from here: check TENSORRT_VERSION against them; another tag needs its own TENSORRT_VERSION).
# torch 2.13 brings its own CUDA 13 libraries: the node's driver must be 580 or newer.
ARG BASE=nvcr.io/nvidia/tensorrt:25.08-py3
# 25.08 is CUDA 13.0 (as are torch 2.13's wheels): TensorRT's CUDA 13 bindings
ARG TENSORRT_BINDINGS=tensorrt-cu13-bindings
ARG TENSORRT_VERSION=10.13.2.6
# The pip and uv that e2e/setup.sh pins; setuptools and wheel only build Lathe's own wheel (not in the image).
ARG PIP_VERSION=26.3
ARG UV_VERSION=0.13.9
ARG PYTHON_VERSION=3.11.7
ARG SETUPTOOLS_VERSION=84.2.1
ARG WHEEL_VERSION=0.48.0

FROM ${BASE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
ARG PIP_VERSION
ARG UV_VERSION
ARG PYTHON_VERSION
# Lathe needs Python 3.11; the base's Ubuntu ships another. uv (pinned) installs a standalone CPython 3.11 under
# /opt/python, readable by the non-root user. NVIDIA's image is a development image: its compilers go, and the
# build stops if one is left (ModelOpt's cppimport then uses its numpy fallback).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3-pip \
 && python3 -m pip install --break-system-packages --no-cache-dir uv==${UV_VERSION} \
 && UV_PYTHON_INSTALL_DIR=/opt/python uv python install ${PYTHON_VERSION} \
 && ln -s "$(UV_PYTHON_INSTALL_DIR=/opt/python uv python find ${PYTHON_VERSION})" /usr/local/bin/python3.11 \
 && python3 -m pip uninstall -y --break-system-packages uv \
 && pkgs=$(dpkg-query -W -f '${Package}\n' | grep -E '^(gcc|g\+\+|cpp|make|build-essential|clang)(-[0-9.]+)?$' || true) \
 && if [ -n "$pkgs" ]; then apt-get purge -y --auto-remove $pkgs; fi \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && for c in gcc cc g++ c++ make; do if command -v "$c"; then echo "compiler left in the image: $c" >&2; exit 1; fi; done \
 && python3.11 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'

# uid 65532 gets a passwd entry: kopf names itself user@host (getpass.getuser), which looks it up.
RUN groupadd --gid 65532 lathe \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin lathe

FROM runtime AS venv
ARG PIP_VERSION
RUN --mount=type=cache,target=/root/.cache/pip \
    python3.11 -m venv /opt/lathe && /opt/lathe/bin/pip install pip==${PIP_VERSION}

# The worker's pins with all of torch's CUDA dependencies (images/worker-gpu.lock) plus TensorRT's
# Python bindings for the base's TensorRT (its libraries come from the base, not a second copy from PyPI).
# The wheel's module is `tensorrt_bindings` (PyPI's `tensorrt` is an sdist that fetches libraries).
# `tensorrt` itself is a two-line shim over them: the backend imports `tensorrt` (the module its type stubs name),
# and PyPI's `tensorrt` package would download a second copy of the libraries from NVIDIA's index.
FROM venv AS deps
ARG TENSORRT_BINDINGS
ARG TENSORRT_VERSION
COPY images/worker-gpu.lock /tmp/image.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/lathe/bin/pip install --no-deps --only-binary=:all: -r /tmp/image.lock \
      ${TENSORRT_BINDINGS}==${TENSORRT_VERSION} \
 && /opt/lathe/bin/pip uninstall -y setuptools \
 && site=$(/opt/lathe/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && mkdir "$site/tensorrt" \
 && printf 'from tensorrt_bindings import *  # noqa: F403\nfrom tensorrt_bindings import __version__  # noqa: F401\n' \
      > "$site/tensorrt/__init__.py" \
 && /opt/lathe/bin/python -c "import tensorrt as trt, torch, modelopt.onnx.quantization; print('tensorrt', trt.__version__, trt.Builder, 'torch', torch.__version__)"

FROM venv AS wheel
ARG PIP_VERSION
ARG SETUPTOOLS_VERSION
ARG WHEEL_VERSION
RUN --mount=type=cache,target=/root/.cache/pip \
    python3.11 -m venv /opt/build \
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
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/lathe/bin/pip install --no-deps --no-index --no-cache-dir /wheels/lathe-*.whl
ENV PATH=/opt/lathe/bin:$PATH \
    HOME=/tmp TMPDIR=/tmp XDG_CACHE_HOME=/tmp/.cache PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
# NVIDIA's entrypoint script prints a banner and checks the driver; the Job runs `lathe worker` itself.
ENTRYPOINT ["lathe"]
CMD ["worker", "--workdir", "/tmp/work"]
