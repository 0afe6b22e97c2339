"""blockadmm: Stochastic Block-ADMM training for PyTorch."""
from .prox import Prox
from .trainer import ADMMConfig, BlockADMM, NonFiniteError, StepStats

__version__ = "0.1.0"

__all__ = ["ADMMConfig", "BlockADMM", "NonFiniteError", "Prox", "StepStats", "__version__"]
