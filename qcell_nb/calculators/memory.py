"""How much memory a PBE0 calculation may use (PySCF's ``max_memory``, MB).

PySCF keeps the density-fitting tensors B (naux x nao(nao+1)/2 doubles) in
memory only while they take less than 90% of ``max_memory``, and its default
``max_memory`` is 4,000 MB whatever the machine has. Above that, B goes to a
temporary HDF5 file that every SCF cycle and the gradient
(:mod:`qcell_nb.calculators.df_gradient`) read again. With def2-TZVP and
def2-universal-jkfit, B passes 3.6 GB at ~35 atoms, so the ``tight`` labels
of most QCell fragments would run from disk on a machine with memory to
spare. Sizes of B for glycine oligomers (def2-universal-jkfit):

========  =====  ==========  ===========
chain     atoms  def2-SVP    def2-TZVP
========  =====  ==========  ===========
Gly3      24     0.27 GB     1.05 GB
Gly5      38     1.1 GB      4.3 GB
Gly7      52     2.85 GB     11.3 GB
Gly10     73     8.0 GB      31.6 GB
Gly14     101    21.3 GB     (~85 GB)
========  =====  ==========  ===========

(about N^3; the bracketed figure is extrapolated).

:func:`memory_budget_mb` gives the budget instead from what the process can
have: :data:`BUDGET_FRACTION` of the machine's available memory, or of the
Dask worker's memory limit inside a worker (Dask pauses a worker at 80% of
its limit and restarts it at 95%). A value the user sets (the calculator's
``max_memory_mb``, or PySCF's own ``PYSCF_MAX_MEMORY`` environment variable)
is used as given.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import math
import os
import sys
from collections.abc import Iterator

#: Share of the available memory (or of a Dask worker's limit) given to PySCF. PySCF counts the
#: process's whole resident size against ``max_memory``, so the budget bounds the process.
BUDGET_FRACTION = 0.7

#: Never less than this (MB): PySCF's block sizes need some room even on a small machine.
MINIMUM_BUDGET_MB = 500.0


def available_memory_bytes() -> int:
    """MemAvailable of this machine (bytes), or 0 if it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def dask_worker_memory_limit_bytes() -> int | None:
    """The memory limit (bytes) of the Dask worker running this code, or None outside a worker or without a limit."""
    if "distributed" not in sys.modules:  # no worker can be running without it; do not import it
        return None
    from distributed import get_worker

    try:
        limit = get_worker().memory_manager.memory_limit
    except (ValueError, AttributeError):  # not in a worker (ValueError), or an older worker
        return None
    return int(limit) if limit else None


def memory_budget_mb(requested: float | None = None) -> float:
    """PySCF ``max_memory`` (MB) for one calculation in this process.

    Parameters
    ----------
    requested:
        The user's value (MB), used as given; None: ``PYSCF_MAX_MEMORY`` if
        that is set, otherwise :data:`BUDGET_FRACTION` of the smaller of the
        machine's available memory and the Dask worker's limit, at least
        :data:`MINIMUM_BUDGET_MB`.

    Raises
    ------
    ValueError
        If ``requested`` is not a positive finite number.
    """
    if requested is not None:
        try:
            value = float(requested)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"max_memory_mb={requested!r} is not a positive number of megabytes")
        return value
    # The user's PYSCF_MAX_MEMORY, or nothing to go by: PySCF's own value.
    limits = ([] if os.environ.get("PYSCF_MAX_MEMORY")
              else [b for b in (available_memory_bytes(), dask_worker_memory_limit_bytes()) if b])
    if not limits:
        from pyscf.lib import param

        return float(param.MAX_MEMORY)
    return max(MINIMUM_BUDGET_MB, BUDGET_FRACTION * min(limits) / 1e6)


#: A label whose process grew by more than this (MB) hands the freed memory back when it ends
#: (:func:`memory_returned`); below it, the collection and trim (~0.1 s) would cost a small label
#: (Gly1: 4 s) more than the memory is worth.
RELEASE_THRESHOLD_MB = 500.0


def resident_mb() -> float:
    """This process's resident memory (MB), as PySCF counts it against ``max_memory``."""
    from pyscf import lib

    return float(lib.current_memory()[0])


@contextlib.contextmanager
def memory_returned(threshold_mb: float | None = None) -> Iterator[None]:
    """Within the block, compute; after it, if the process grew by more than ``threshold_mb``
    (None: :data:`RELEASE_THRESHOLD_MB`), :func:`release_freed_memory` (whatever the block freed
    goes back to the system)."""
    start = resident_mb()
    try:
        yield
    finally:
        if resident_mb() - start > (RELEASE_THRESHOLD_MB if threshold_mb is None else threshold_mb):
            release_freed_memory()


def release_freed_memory() -> bool:
    """Give the memory Python has freed back to the system (glibc's ``malloc_trim``); False where
    there is no glibc.

    A label frees its arrays when it ends, but glibc keeps most of the heap it grew to: after a
    Gly3/def2-SVP label a process held 1.8 GB instead of 0.4 GB. PySCF counts that resident
    size against ``max_memory`` (so the next label in the process has less room for its
    tensors, see :func:`memory_budget_mb`), and a Dask worker counts it against its memory limit
    (it pauses at 80%). Measured after that label: 1812 -> 403 MB.
    """
    gc.collect()  # the SCF's objects hold reference cycles (bound closures), so refcounts alone do not free them
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` from the symbols already in this process, or None (musl, macOS).

    Not through ``ctypes.util.find_library``, which runs a subprocess: a fork of a process that
    may hold many GB.
    """
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
