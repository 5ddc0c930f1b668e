"""qcell-nb: an open, notebook-driven re-implementation of the QCell workflow.

Units inside the package are ASE's: eV, Å, elementary charge, e·Å.
"""

__version__ = "0.1.0"
