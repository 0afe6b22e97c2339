"""A float64 step oracle: one Stochastic Block-ADMM `step`, written from DESIGN §1 (a helper, not a test).

It imports nothing of blockadmm: blocks are plain modules, constraints are given as (kind, params) and
their proximal maps are written out here, the weight update is plain SGD (p -= lr * grad). The semantics
it fixes, beyond the formulas of DESIGN §1:

- boundary k is block k's output; the auxiliary step of boundary k minimises
  (rho_k/2)|z_k - f_k(z_{k-1}) + u_k|^2 + [the per-sample sum of block k+1's term, or of the task loss],
  k_z proximal-gradient steps, the prox applied after each step;
- step rules: "grad" z -= min(lr_z, 1/rho_k, 2/(rho_k + L_k)) * d, L_k the consumer's curvature bound from its weights
  (curvature_cap): rho_{k+1} |J|^2 for block k+1's term, |J|^2 / 2 for the cross-entropy of the last block, |J| the
  product of its Linear layers' spectral norms and its activations' largest slopes (tanh 1, sigmoid 1/4);
  "sign" z -= lr_z * sign(d), "adam" z -= lr_z * m_hat / (sqrt(v_hat) + 1e-8) with betas (0.9, 0.999) and
  moments per boundary kept over the k_z steps and the sweeps of one step only; the prox threshold uses the step's lr;
- Gauss-Seidel (top-down: the last boundary first; bottom-up) reads every neighbour as it is now; Jacobi
  reads every neighbour's z, u as they were at the start of the sweep, and the gradient from above is
  evaluated once per sweep, at the sweep-start z_k; the weight and dual steps of block k then also take
  its input from the sweep start;
- weight step: every block on its own term with the weights of the sweep's start, (rho_k/2m)|z_k -
  f_k(input) + u_k|^2 for k < B-1 and the mean task loss for the last block, k_w times;
- dual step, with the new weights: u_k += dual_step * (z_k - f_k(input)); online mode skips it in the last
  sweep (those duals leave with the mini-batch);
- returned beside the results: the smallest non-zero |d| a sign or Adam step met ("sign_margin"), below which
  a float32 run may legitimately take the other sign; per boundary, whether the curvature cap bound ("capped");
- reported: network_loss = the mean task loss of the composed forward F(x) with the weights the step starts
  from; loss = the last block's term in the last weight step (before that update); primal_k =
  |z_k - a_k| / |z_k| with a_k of the last dual step (online: of the last auxiliary step); dual_k =
  rho_k |z_k(end) - z_k(step start)| / |z_k(end)|.
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def prox(spec, z, lr):
    """The proximal map of spec = None | ("nonneg",) | ("box", lo, hi) | ("l1", lam), written out."""
    if spec is None:
        return z
    kind = spec[0]
    if kind == "nonneg":
        return torch.where(z > 0, z, torch.zeros_like(z))
    if kind == "box":
        lo, hi = spec[1], spec[2]
        return torch.where(z < lo, torch.full_like(z, lo), torch.where(z > hi, torch.full_like(z, hi), z))
    if kind == "l1":
        t = lr * spec[1]
        return torch.where(z > t, z - t, torch.where(z < -t, z + t, torch.zeros_like(z)))
    raise ValueError(f"unknown prox spec {spec!r}")


def _smallest_nonzero(d):
    """min |d| over the non-zero entries (an exact zero, a term still at rest, is exact in float32 too)."""
    nonzero = d.abs()[d != 0]
    return float(nonzero.min()) if nonzero.numel() else float("inf")


def _consumer_grad(block, zin, z_out, u_out, rho, y):
    """d/dz_in of the per-sample sum of the consuming term: block's ADMM term, or the task loss (last block)."""
    zin = zin.detach().requires_grad_(True)
    out = block(zin)
    if z_out is None:
        term = F.cross_entropy(out, y, reduction="sum")
    else:
        term = 0.5 * rho * (z_out - out + u_out).square().sum()
    (g,) = torch.autograd.grad(term, zin)
    return g


SLOPES = {torch.nn.Tanh: 1.0, torch.nn.Sigmoid: 0.25, torch.nn.ReLU: 1.0}


def _lipschitz(block):
    """|J| <= the product of the Linear layers' spectral norms and the activations' largest slopes."""
    bound = 1.0
    for m in block.modules() if isinstance(block, torch.nn.Sequential) else [block]:
        if isinstance(m, torch.nn.Linear):
            bound *= float(torch.linalg.matrix_norm(m.weight.detach(), 2))
        elif type(m) in SLOPES:
            bound *= SLOPES[type(m)]
    return bound


def oracle_step(
    blocks,
    x,
    y,
    z=None,
    u=None,
    seen=None,
    *,
    rho,
    lr_z,
    lr_w,
    sweeps,
    k_z,
    k_w,
    order,
    aux_step,
    dual_step,
    constraints,
    online,
    curvature_cap=True,
):
    """One step on float64 copies of `blocks`. Batch mode: z, u are the rows gathered from the tables and
    `seen` their flags (a row never seen starts at the forward values, u = 0). Returns a dict with the new
    blocks, z, u and the reported loss, primal and dual residuals."""
    blocks = [copy.deepcopy(b).double() for b in blocks]
    x, B = x.double(), len(blocks)
    nb = B - 1
    with torch.no_grad():
        fwd, h = [], x
        for k in range(nb):
            h = blocks[k](h)
            fwd.append(h)
    if online:
        z, u = [t.clone() for t in fwd], [torch.zeros_like(t) for t in fwd]
    else:
        fresh = ~seen.view(-1, 1)
        z = [torch.where(fresh, f0, t.double()) for f0, t in zip(fwd, z)]
        u = [torch.where(fresh, torch.zeros_like(f0), t.double()) for f0, t in zip(fwd, u)]
    z_start = [t.clone() for t in z]
    jacobi = order == "jacobi"
    adam = {}
    primal_sq, loss = [None] * nb, None
    with torch.no_grad():
        h = x
        for block in blocks:
            h = block(h)
        network_loss = float(F.cross_entropy(h, y))
    # the smallest |d| a sign (or Adam) step saw: float32 cannot follow a sign decided by rounding
    margin = float("inf")
    capped = [False] * nb  # where the consumer's curvature made the step smaller than min(lr_z, 1/rho_k)

    def f(k, inp):
        with torch.no_grad():
            return blocks[k](inp)

    for sweep in range(sweeps):
        z_src = [t.clone() for t in z] if jacobi else z
        u_src = [t.clone() for t in u] if jacobi else u

        def inp(k, z_src=z_src):
            return x if k == 0 else z_src[k - 1]

        last_online = online and sweep == sweeps - 1
        for k in range(nb) if order == "bottom-up" else range(nb - 1, -1, -1):
            a = f(k, inp(k))
            z_next = z_src[k + 1] if k + 1 < nb else None
            u_next = u_src[k + 1] if k + 1 < nb else None
            rho_next = rho[k + 1] if k + 1 < nb else None
            g_fixed = _consumer_grad(blocks[k + 1], z_src[k], z_next, u_next, rho_next, y) if jacobi else None
            for _ in range(k_z):
                g = g_fixed if jacobi else _consumer_grad(blocks[k + 1], z[k], z_next, u_next, rho_next, y)
                d = rho[k] * (z[k] - a + u[k]) + g
                if aux_step == "grad":
                    scale = (rho_next if rho_next is not None else 0.5) if curvature_cap else 0.0
                    lr = min(lr_z, 1.0 / rho[k], 2.0 / (rho[k] + scale * _lipschitz(blocks[k + 1]) ** 2))
                    capped[k] = capped[k] or lr < min(lr_z, 1.0 / rho[k])
                    z[k] = prox(constraints[k], z[k] - lr * d, lr)
                elif aux_step == "sign":
                    margin = min(margin, _smallest_nonzero(d))
                    z[k] = prox(constraints[k], z[k] - lr_z * torch.sign(d), lr_z)
                else:
                    margin = min(margin, _smallest_nonzero(d))
                    t, m, v = adam.get(k, (0, torch.zeros_like(d), torch.zeros_like(d)))
                    b1, b2 = ADAM_BETAS
                    t, m, v = t + 1, b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
                    adam[k] = (t, m, v)
                    direction = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + ADAM_EPS)
                    z[k] = prox(constraints[k], z[k] - lr_z * direction, lr_z)
            if last_online:
                primal_sq[k] = (z[k] - a).square().sum()
        m_rows = x.shape[0]
        for _ in range(k_w):
            grads = []
            for k, block in enumerate(blocks):
                params = list(block.parameters())
                out = block(inp(k))
                if k < nb:
                    term = (0.5 * rho[k] / m_rows) * (z[k] - out + u[k]).square().sum()
                else:
                    term = F.cross_entropy(out, y)
                    loss = float(term.detach())
                grads.append(torch.autograd.grad(term, params))
            with torch.no_grad():
                for block, gs in zip(blocks, grads):
                    for p, gp in zip(block.parameters(), gs):
                        p -= lr_w * gp
        if not last_online:
            for k in range(nb):
                a = f(k, inp(k))
                u[k] = u[k] + dual_step * (z[k] - a)
                primal_sq[k] = (z[k] - a).square().sum()
    norms = [zk.norm().clamp_min(1e-15) for zk in z]
    primal = [float(p.sqrt() / n) for p, n in zip(primal_sq, norms)]
    dual = [float(r * (zk - z0).norm() / n) for r, zk, z0, n in zip(rho, z, z_start, norms)]
    return {"blocks": blocks, "z": z, "u": u, "loss": loss, "network_loss": network_loss, "primal": primal,
            "dual": dual, "sign_margin": margin, "capped": capped}
