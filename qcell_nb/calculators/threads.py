"""One BLAS thread inside loops over small grid blocks.

numpy's OpenBLAS keeps its own pthreads pool; PySCF's C code (libxc, ``eval_gto``) runs on
OpenMP. A loop that alternates a small BLAS product with an OpenMP call on every ~1000-point
block makes each pool's threads spin while the other pool wants the cores. On 2 cores, a Gly1
label took 35 s wall (71 CPU-s) with two threads of each against 4 s with one thread. With BLAS on
one thread inside those loops, and OpenMP on all of them, it takes 6.4 s wall. With BLAS on one
thread for the whole label it takes 4.1 s, and Gly3 30 s against 41 s: the larger products between
PySCF's OpenMP integral code (DF exchange, eigensolver) are too small here to gain from a thread
of their own. :class:`~qcell_nb.calculators.pbe0.PBE0MBD` therefore labels with one BLAS thread
unless told otherwise (its ``blas_threads``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

_controller = None


def blas_threads(limit: int | None) -> AbstractContextManager:
    """A context in which every loaded BLAS library (OpenBLAS, MKL, BLIS) runs on at most
    ``limit`` threads (None: as they are); the previous counts come back on exit. OpenMP is
    left as it is.

    Raises
    ------
    ValueError
        If ``limit`` is neither None nor a positive integer.
    """
    check_blas_threads(limit)
    if limit is None:
        return nullcontext()
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        # Made at first use, when numpy's, scipy's and PySCF's libraries are all loaded.
        _controller = ThreadpoolController()
    # The limit holds from here (threadpoolctl applies it when made), not from entering.
    return _controller.limit(limits=limit, user_api="blas")


def check_blas_threads(limit) -> None:
    """Raise ValueError unless ``limit`` is None or a positive integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"blas_threads={limit!r}: give a positive number of threads or None")


def single_threaded_blas() -> AbstractContextManager:
    """:func:`blas_threads` (1): for the loops over small grid blocks."""
    return blas_threads(1)
