#!/usr/bin/env bash
# Set up the project's virtual environment from the project's own files.
#   ./setup.sh        the package and its runtime stack (PyPI only)
#   ./setup.sh test   the same plus the test and benchmark extras and pymbd (for MBD cross-checks)
# Re-running is cheap: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "qcell-nb needs Python >= 3.11 (jax does); set PYTHON=python3.11 or newer")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install --quiet -e ".[test]"
  # pymbd (libmbd's Python side) is optional: our MBD is JAX code; pymbd only cross-checks its energies.
  # Its PyPI release needs an old poetry-core and no Fortran libmbd (numpy backend, energies only), and
  # its metadata has a requirement that pip >= 24.1 rejects as invalid: an older pip, kept apart in
  # .venv/legacy-pip, installs it into the venv (the venv's own pip stays current).
  if ! .venv/bin/python -c 'import pymbd' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --target .venv/legacy-pip "pip<24.1"
    LIBMBD_PREFIX= PIP_CONSTRAINT="$PWD/.ci/pymbd-build-constraints.txt" PYTHONPATH="$PWD/.venv/legacy-pip" \
      .venv/bin/python -m pip install --quiet "pymbd==0.15.0" \
      || echo "setup.sh: pymbd did not install; the MBD cross-check tests will be skipped"
  fi
else
  .venv/bin/python -m pip install --quiet -e .
fi
echo "setup.sh: environment ready in .venv"
