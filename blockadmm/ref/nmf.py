"""Reference Lee-Seung multiplicative updates for V ~= H W (Frobenius), in place (DESIGN §2)."""
from __future__ import annotations

import torch


def nmf_mu_update(
    V: torch.Tensor,
    H: torch.Tensor,
    W: torch.Tensor,
    *,
    which: str = "both",
    eps: float = 1e-12,
    l1: float = 0.0,
    l2: float = 0.0,
) -> None:
    Vf, Wf = V.float(), W.float()
    if which in ("H", "both"):
        Hf = H.float()
        Hf = Hf * (Vf @ Wf.T) / (Hf @ (Wf @ Wf.T) + l1 + l2 * Hf + eps)
        H.copy_(Hf)
    if which in ("W", "both"):
        Hf = H.float()
        Wf = Wf * (Hf.T @ Vf) / ((Hf.T @ Hf) @ Wf + l1 + l2 * Wf + eps)
        W.copy_(Wf)
