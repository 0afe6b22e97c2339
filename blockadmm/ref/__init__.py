"""Pure-torch references of the hot loops: the test oracles and the CPU fallback."""
from .aux_dual import aux_dual_update
from .linear_block import ACTIVATIONS, linear_block_fwd_bwd
from .nmf import nmf_mu_update
from .nmf_hals import nmf_hals_update

__all__ = ["ACTIVATIONS", "aux_dual_update", "linear_block_fwd_bwd", "nmf_hals_update", "nmf_mu_update"]
