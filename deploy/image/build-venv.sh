#!/bin/sh
# The image's build recipe, run by the Dockerfile's build stage and by
# tests/integration/test_packaging.py, so that the test builds what the image builds.
#
# In SRC (the files the Dockerfile copies), with the building Python's pip (PYTHON): the
# compiler and the build backend, and the pinned runtime dependencies, which mypyc needs to
# type-check the compiled modules (without them it stops at "Cannot find implementation or
# library stub for module named httptools"); then the compiled wheel, built without isolation
# (an isolated build would have neither); then VENV, a virtualenv without pip holding the pinned
# dependencies and the wheel, its bytecode compiled now (the root filesystem is read-only at run),
# checked for a missing or conflicting pin.
set -eu
PYTHON=${PYTHON:-python3}
SRC=${SRC:-/src}
VENV=${VENV:-/opt/mta-ingress}
WHEELS=${WHEELS:-/wheels}
requirements="$SRC/deploy/image/requirements.txt"

"$PYTHON" -m pip install "mypy==2.4.1" "setuptools==84.2.1" -r "$requirements"
MTA_INGRESS_COMPILE=1 "$PYTHON" -m pip wheel --no-deps --no-build-isolation \
    --wheel-dir "$WHEELS" "$SRC"
"$PYTHON" -m venv --without-pip "$VENV"
"$PYTHON" -m pip --python "$VENV/bin/python" install --compile --no-deps \
    -r "$requirements" "$WHEELS"/mta_ingress-*.whl
# The pins are the whole closure and satisfy every requirement, or the image is not built.
"$PYTHON" -m pip --python "$VENV/bin/python" check
