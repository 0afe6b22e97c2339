"""blockadmm: Stochastic Block-ADMM training for PyTorch."""
from .prox import Prox

__version__ = "0.1.0"

__all__ = ["Prox", "__version__"]
