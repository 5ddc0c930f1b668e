"""Process-wide settings made on ``import qcell_nb``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qcell_nb

PYSCF_BLAS_CORE = """
import ctypes, glob, os
import qcell_nb, pyscf.lib
path = glob.glob(os.path.join(os.path.dirname(pyscf.lib.__file__), "libopenblas*.so"))
if not path:
    print("no bundled openblas")
else:
    lib = ctypes.CDLL(path[0])
    lib.openblas_get_corename.restype = ctypes.c_char_p
    print(lib.openblas_get_corename().decode())
"""


def _core(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PYSCF_BLAS_CORE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(qcell_nb._OPENBLAS_CORE is None, reason="only x86 CPUs with AVX2 get the OpenBLAS kernel choice")
def test_pyscf_openblas_uses_this_cpus_kernels_and_a_user_choice_wins():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    core = _core(env)
    if core == "no bundled openblas":
        pytest.skip("this PySCF build links a system BLAS")
    # not the Barcelona or Prescott fallback; a 0.3.3 built without AVX-512 runs SkylakeX as Haswell
    assert core in {qcell_nb._OPENBLAS_CORE, "Haswell"}
    user_choice = "Haswell" if core != "Haswell" else "Sandybridge"
    assert _core({**env, "OPENBLAS_CORETYPE": user_choice}) == user_choice
