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


def _openblas_core_for_pyscf() -> str | None:
    """OpenBLAS kernel set to name for this Linux x86 CPU ("Zen", "SkylakeX", "Haswell"), or None.

    AMD with AVX2 and FMA: Zen; Intel with AVX-512F: SkylakeX; Intel with AVX2 and FMA: Haswell;
    anything else (or no /proc/cpuinfo): None, OpenBLAS's own detection stands.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            head = cpuinfo.read(8192)
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in head.splitlines() if line.startswith("flags")), [])
    if "avx2" not in flags or "fma" not in flags:
        return None
    if "AuthenticAMD" in head:
        return "Zen"
    if "GenuineIntel" in head:
        return "SkylakeX" if "avx512f" in flags else "Haswell"
    return None


# PySCF's wheel bundles OpenBLAS 0.3.3 (2018), which does not recognise later CPUs and falls back
# to old kernels: recent AMD ones to 2008's "Barcelona" (a 1500x1500 product 0.51 s, with the Zen
# kernels 0.23 s, one thread), recent Intel Xeons to 2004's SSE3 "Prescott" (DF exchange build of
# Gly5/def2-SVP 4.4 s, with SkylakeX, which that build runs as Haswell, 2.3 s). Its
# matrix products are about half of a PBE0 label's time. OpenBLAS reads this when PySCF loads it,
# so it must be set before pyscf is imported; a value the user set wins, and workers started from
# this process inherit it. The newer OpenBLAS of numpy and scipy picks the same kernels itself.
_OPENBLAS_CORE = _openblas_core_for_pyscf()
if "OPENBLAS_CORETYPE" not in _os.environ and _OPENBLAS_CORE is not None:
    _os.environ["OPENBLAS_CORETYPE"] = _OPENBLAS_CORE
