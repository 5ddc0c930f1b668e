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


def _amd_cpu_with_avx2() -> bool:
    """Whether this is a Linux machine with an AMD CPU that has AVX2 and FMA (Zen or later)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            head = cpuinfo.read(8192)
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in head.splitlines() if line.startswith("flags")), [])
    return "AuthenticAMD" in head and "avx2" in flags and "fma" in flags


# PySCF's wheel bundles OpenBLAS 0.3.3, which does not recognise recent AMD CPUs and falls back
# to its 2008 "Barcelona" kernels: half-speed matrix products (a 1500x1500 product: 0.51 s, with
# the Zen kernels 0.23 s, one thread, measured here), and about 45% of a PBE0 label's time is in
# them. OpenBLAS reads this when PySCF loads it, so it must be set before pyscf is imported; a
# value the user set wins, and workers started from this process inherit it.
if "OPENBLAS_CORETYPE" not in _os.environ and _amd_cpu_with_avx2():
    _os.environ["OPENBLAS_CORETYPE"] = "Zen"
