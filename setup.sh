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
  # Its PyPI release needs an old poetry-core and no Fortran libmbd (numpy backend, energies only).
  if ! .venv/bin/python -c 'import pymbd' 2>/dev/null; then
    LIBMBD_PREFIX= PIP_CONSTRAINT="$PWD/.ci/pymbd-build-constraints.txt" \
      .venv/bin/python -m pip install --quiet "pymbd==0.15.0" \
      || echo "setup.sh: pymbd did not install; the MBD cross-check tests will be skipped"
  fi
else
  .venv/bin/python -m pip install --quiet -e .
fi
echo "setup.sh: environment ready in .venv"
