"""Building blocks of the QCell subsets (stage 01)."""

from . import carbohydrates
from .carbohydrates import *  # noqa: F403 - the public names are carbohydrates.__all__

__all__ = list(carbohydrates.__all__)
