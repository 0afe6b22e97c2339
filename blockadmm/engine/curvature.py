"""The curvature that caps the auxiliary step: an upper bound, from the weights, on how fast the consuming block's
term (or the task loss) bends in its input.

Boundary k's auxiliary objective is (rho_k/2)|z_k - a_k + u_k|^2 + [block k+1's term or the task loss at z_k]; a
gradient step on it never diverges below 2/L, L = rho_k + L_{k+1} (engine.rules.GradRule caps it there). L_{k+1} is
rho_{k+1} |J_{k+1}|^2 for a hidden block, (1/2)|J_{k+1}|^2 for a cross-entropy head, and |J_{k+1}| grows with the
block's weights: with a width-independent Adam rate a wide block's spectral norm grows about tenfold in an epoch, and
an uncapped step then overshoots until it diverges (DESIGN §1, stability). The bound here is the product of the
layers' spectral norms (warm-started power iteration) and activation slopes, for blocks built from Linear layers
and the activations below; for other blocks (convolutions, user modules) it is unknown and the step is not capped.
"""
from __future__ import annotations

import torch
from torch import nn

SLOPES = {nn.ReLU: 1.0, nn.Tanh: 1.0, nn.Sigmoid: 0.25, nn.Identity: 1.0, nn.Flatten: 1.0}
MAX_ITERATIONS, TOLERANCE = 100, 1e-6  # power iterations (warm-started from the last call's vector) until sigma settles


def _layers(block: nn.Module) -> list[nn.Module] | None:
    """The block as a chain of leaf modules, or None when it is not a plain chain of known ones."""
    if isinstance(block, nn.Sequential):
        out = []
        for m in block:
            inner = _layers(m)
            if inner is None:
                return None
            out += inner
        return out
    if isinstance(block, nn.Linear) or type(block) in SLOPES or isinstance(block, nn.LeakyReLU):
        return [block]
    return None


class LipschitzBound:
    """|J| <= prod of the Linear layers' spectral norms x the activations' largest slopes, for a chain of Linear
    layers and activations (`known` False otherwise); the power-iteration vectors are kept between calls."""

    def __init__(self, block: nn.Module):
        self.layers = _layers(block)
        self.known = self.layers is not None
        self.vectors: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def spectral_norm(self, i: int, weight: torch.Tensor) -> float:
        w = weight.detach().float()
        v = self.vectors.get(i)
        if v is None:
            v = torch.full((w.shape[1],), w.shape[1] ** -0.5, device=w.device)
        sigma_sq = 0.0
        for _ in range(MAX_ITERATIONS):
            v = w.T @ (w @ v)
            norm = float(v.norm())  # sigma^2 once v is the top right singular vector
            v = v / max(norm, 1e-30)
            if abs(norm - sigma_sq) <= TOLERANCE * norm:
                break
            sigma_sq = norm
        self.vectors[i] = v
        return norm**0.5

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The power-iteration vectors (a resumed run then takes the steps the whole run would have taken)."""
        return {str(i): v for i, v in self.vectors.items()}

    def check_state(self, state) -> None:
        """ValueError unless `state` holds one vector of the right length per Linear layer it names."""
        lengths = {str(i): m.in_features for i, m in enumerate(self.layers or []) if isinstance(m, nn.Linear)}
        if not isinstance(state, dict) or set(state) - set(lengths) or not all(
                isinstance(v, torch.Tensor) and v.dtype == torch.float32 and tuple(v.shape) == (lengths[i],)
                for i, v in state.items()):
            raise ValueError(f"expected float32 vectors for layers {sorted(lengths)} of lengths {lengths}")

    def load_state_dict(self, state: dict) -> None:
        self.vectors = {int(i): v.clone() for i, v in state.items()}

    def __call__(self) -> float:
        bound = 1.0
        for i, m in enumerate(self.layers):
            if isinstance(m, nn.Linear):
                bound *= self.spectral_norm(i, m.weight)
            elif isinstance(m, nn.LeakyReLU):
                bound *= max(1.0, abs(m.negative_slope))
            else:
                bound *= SLOPES[type(m)]
        return bound


def consumer_curvature(bound: LipschitzBound, rho: float | None, loss_curvature: float | None) -> float:
    """L_{k+1}: rho |J|^2 for a hidden consumer (rho given), loss_curvature |J|^2 for the last block; 0 (no cap)
    where the bound or the loss's curvature is unknown."""
    scale = rho if rho is not None else loss_curvature
    if not bound.known or scale is None:
        return 0.0
    return scale * bound() ** 2
