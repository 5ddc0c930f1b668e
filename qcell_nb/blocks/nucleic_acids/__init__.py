"""Nucleic-acid building blocks (QCell ``nucleic_acids`` subset), stages 01-03.

:mod:`.geometry` idealised helices from standard bases and canonical torsions,
:mod:`.build` DNA duplexes and RNA strands with counter-ions (stage 01),
:mod:`.sampling` solvated OpenMM MD (stage 02), :mod:`.fragments` capped
trimers and base-pair dimers (stage 03), :mod:`.descriptors` P-P distances and
backbone bending against the canonical A/B/Z values.
"""

from . import build, descriptors, fragments, geometry, sampling
from .build import *  # noqa: F403
from .descriptors import *  # noqa: F403
from .fragments import *  # noqa: F403
from .sampling import *  # noqa: F403

__all__ = list(build.__all__) + list(descriptors.__all__) + list(fragments.__all__) + list(sampling.__all__)
