"""qcell-nb: an open, notebook-driven re-implementation of the QCell workflow.

Units inside the package are ASE's: eV, Å, elementary charge, e·Å.
"""

__version__ = "0.1.0"

import os as _os

# JAX keeps compiled functions on disk (MBD, the model): stage notebooks, Dask workers and tests
# are separate processes that compile the same shapes, and a warm cache turned a 24 s first MBD
# call into 5 s (measured). Environment variables, so that child processes inherit the setting
# and jax need not be imported here; QCELL_NB_JAX_CACHE=0 switches it off.
if _os.environ.get("QCELL_NB_JAX_CACHE", "1") != "0":
    _cache_root = _os.environ.get("QCELL_NB_CACHE") or _os.path.join(_os.path.expanduser("~"), ".cache", "qcell_nb")
    _os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _os.path.join(_cache_root, "jax"))
    _os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
