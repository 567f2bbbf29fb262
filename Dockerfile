# syntax=docker/dockerfile:1
# mta-ingress image: see docs/deployment.md for how it is built and run.
#
# The two stages use the same base image, so the virtualenv built in the first one finds its
# interpreter at the same path (/usr/local/bin/python3.11 in the python: images) in the second.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# What the build stage adds to the base for mypyc. A base made from Debian's own packages
# (debootstrap with python3.11, python3.11-venv, python3-pip) also needs python3.11-dev, whose
# headers the python: images carry already.
ARG BUILD_PACKAGES="gcc libc6-dev"

# ---- build: a virtualenv holding the project and its runtime dependencies, nothing else ----
FROM ${PYTHON_IMAGE} AS build
ARG BUILD_PACKAGES
# Every dependency ships manylinux wheels for amd64 and arm64; the compiler is for the project's
# own request path, which mypyc turns into C extensions (setup.py, MTA_INGRESS_COMPILE=1). The
# base image carries the Python headers; the runtime stage gets neither.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${BUILD_PACKAGES} \
    && rm -rf /var/lib/apt/lists/*
# PIP_BREAK_SYSTEM_PACKAGES: a Debian-packaged Python refuses pip installs into itself (PEP 668);
# this stage is thrown away, and only the virtualenv it builds is kept.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    MTA_INGRESS_COMPILE=1 \
    PYTHON=python3
WORKDIR /src
# The same files the wheel is made of (tests/integration/test_packaging.py builds from this list),
# and the recipe with its pinned runtime dependencies.
COPY pyproject.toml setup.py README.md ./
COPY ingress ingress
COPY tls tls
COPY routing routing
COPY deploy/image deploy/image
# One recipe, shared with the packaging test (deploy/image/build-venv.sh): the pinned runtime
# dependencies where mypyc type-checks, the compiled wheel, and a virtualenv without pip.
RUN sh deploy/image/build-venv.sh

# ---- runtime: the base image, one non-root user, the virtualenv ----
FROM ${PYTHON_IMAGE}
# Fixed numeric ids: the manifests' runAsUser/runAsGroup/fsGroup name them without a lookup.
# The base's own pip goes too, so the image holds no installer: the python: images install it
# with pip itself, a Debian-packaged base as python3-pip.
RUN groupadd --system --gid 10001 ingress \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ingress \
    && if [ "$(dpkg-query -W -f='${Status}' python3-pip 2>/dev/null)" = "install ok installed" ]; then \
           apt-get purge -y --auto-remove python3-pip; \
       else \
           python3 -m pip uninstall -y pip; \
       fi
COPY --from=build /opt/mta-ingress /opt/mta-ingress
# PYTHONDONTWRITEBYTECODE: the root filesystem is mounted read-only, so a missing .pyc must not
# be attempted (they are all compiled above). Writable places are volumes: /tmp (an emptyDir,
# metrics' multiprocess files) and /mnt/tls only when ACME is enabled.
ENV PATH=/opt/mta-ingress/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="mta-ingress" \
      org.opencontainers.image.description="Ingress for Kubernetes mail clusters: SMTP relay with PROXY protocol, HTTP(S) reverse proxy" \
      org.opencontainers.image.licenses="MIT"
USER 10001:10001
WORKDIR /
# The KRA contract's ports, all above 1024 so no capability is needed to bind them: SMTP 25 and
# 587, HTTP and HTTPS, each plain (100xx) and behind a PROXY-protocol load balancer (110xx);
# then the admin listener (/metrics, /livez, /readyz); then the egress preset's SOCKS5 and forward
# listeners (docs/egress.md).
EXPOSE 10025 11025 10587 11587 10080 11080 10443 11443 10081 5000 2526
# Exec form: the kubelet's SIGTERM reaches the supervisor itself (no shell in between to swallow
# it), which starts the drain.
ENTRYPOINT ["mta-ingress"]
CMD ["run"]
