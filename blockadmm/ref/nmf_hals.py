"""Reference HALS / coordinate-descent pass on NMF codes (DESIGN §2, issue 27): the oracle of
`blockadmm.ops.nmf_hals_update`.

For V ≈ H W (Frobenius) with A = V Wᵀ − l1 and G = W Wᵀ + l2·I given, each row i of H is updated on its own,
its components visited in the order `perm`; this is scikit-learn's `_update_cdnmf_fast` with the loops over
rows and components swapped (rows are independent, so the values are the same). Vectorised over the rows,
a Python loop over the k components.
"""

from __future__ import annotations

import torch


def nmf_hals_update(
    H: torch.Tensor, A: torch.Tensor, G: torch.Tensor, *, perm: torch.Tensor | None = None
) -> torch.Tensor:
    """In place on H (n×k): for t in perm, grad = H[:, t]'s gradient H G[t] − A[:, t]; the projected
    gradient (min(0, grad) where H[:, t] == 0) adds |.| to the violation; H[:, t] ← max(H[:, t] − grad /
    G[t, t], 0) unless G[t, t] == 0. Returns the violation summed over rows, float64 for float64 H, else
    float32 (accumulated per row in float32)."""
    n, k = H.shape
    out_dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    if n == 0 or k == 0:
        return torch.zeros((), dtype=out_dtype, device=H.device)
    order = range(k) if perm is None else perm.tolist()
    violation = torch.zeros(n, dtype=out_dtype, device=H.device)
    for t in order:
        h = H[:, t]
        grad = H @ G[t] - A[:, t]
        pg = torch.where(h == 0, grad.clamp(max=0), grad)
        violation += pg.abs().to(out_dtype)
        hess = G[t, t]
        H[:, t] = torch.where(hess != 0, (h - grad / hess).clamp(min=0), h)
    return violation.sum(dtype=torch.float64).to(out_dtype)
