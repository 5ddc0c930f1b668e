"""Building blocks of the QCell subsets (stage 01), one module per class.

``carbohydrates`` and ``glycans`` (monosaccharides, disaccharides, glycopeptides),
``nucleic_acids`` (DNA duplexes, RNA strands), ``lipids``, ``ions_water`` and ``dimers``.
Each module also carries its class's sampling (stage 02), fragment selection (stage 03) and
structural checks; they are imported as modules, not star-imported, since their names
(``FRAGMENT_KINDS``, ``sample_block``...) would collide.
"""

from . import carbohydrates, dimers, glycans, ions_water, lipids, nucleic_acids
from .carbohydrates import *  # noqa: F403 - the monosaccharide API stays importable from here

__all__ = ["carbohydrates", "dimers", "glycans", "ions_water", "lipids", "nucleic_acids",
           *carbohydrates.__all__]
