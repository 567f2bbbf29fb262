# syntax=docker/dockerfile:1
# mta-ingress image: see docs/deployment.md for how it is built and run.
#
# The two stages use the same base image, so the virtualenv built in the first one finds its
# interpreter at the same path (/usr/local/bin/python3.11) in the second.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv holding the project and its runtime dependencies, nothing else ----
FROM ${PYTHON_IMAGE} AS build
# Every dependency ships manylinux wheels for amd64 and arm64; the compiler is for the project's
# own request path, which mypyc turns into C extensions (setup.py, MTA_INGRESS_COMPILE=1). The
# base image carries the Python headers; the runtime stage gets neither.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MTA_INGRESS_COMPILE=1
# The compiler and the build backend, in the build stage's own Python: the wheel is built there
# without isolation (an isolated build would not have mypy), then installed into the virtualenv.
RUN pip install "mypy==2.4.1" "setuptools==84.2.1"
WORKDIR /src
# The same files the wheel is made of (tests/integration/test_packaging.py builds from this list).
COPY pyproject.toml setup.py README.md ./
COPY ingress ingress
COPY tls tls
COPY routing routing
# --without-pip plus the base image's pip: the final virtualenv carries no installer at all.
# Bytecode is compiled here, at install time, because the root filesystem is read-only at run.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/mta-ingress \
    && pip --python /opt/mta-ingress/bin/python install --compile /wheels/mta_ingress-*.whl

# ---- runtime: the base image, one non-root user, the virtualenv ----
FROM ${PYTHON_IMAGE}
# Fixed numeric ids: the manifests' runAsUser/runAsGroup/fsGroup name them without a lookup.
RUN groupadd --system --gid 10001 ingress \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ingress
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
# then the admin listener (/metrics, /livez, /readyz).
EXPOSE 10025 11025 10587 11587 10080 11080 10443 11443 10081
# Exec form: the kubelet's SIGTERM reaches the supervisor itself (no shell in between to swallow
# it), which starts the drain.
ENTRYPOINT ["mta-ingress"]
CMD ["run"]
