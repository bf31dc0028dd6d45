r"""The certificate of an answer: how far returned weights are from optimal, measured, not assumed.

Every method's answer goes through here (docs/math.md §7), so ``SolverInfo.residual`` means the
same thing for ``exact``, ``relaxed``, ``pgd`` and the lasso solvers. Cost: one N×K×D GEMM and a
few elementwise passes over (N, K) (past the block budget, :mod:`.engine.blocks`, a block of rows
at a time: its (N, K) buffers are then one block's). The one exception is a saving, not a
shortcut: where ``pgd``'s rounds run compiled (the CPU), each row's last round has this GEMM's G
already, and the round measures the same quantities from it with the same formulas
(:func:`scq_scale`; ``cpu_kernels._certificate_row``, shared with this module's compiled pass),
handed over as ``info.extra["certificate"]``; tests/test_certificates.py checks the two against
each other.

**SCQ** (f(p) = ½pᵀHp − bᵀp on Δ_K, H = EEᵀ + λI, b = Ez + λp̃). With g = Hp − b = E(z_q − z)
+ λ(p − p̃), the multiplier estimate ν = −gᵀp and μ = g + ν1:

- residual (relative, dimensionless): max_k |min(p_k, μ_k/s)| and |1ᵀp − 1|, s the row's scale
  ‖e‖max(‖e‖max + ‖z‖) + λ(1 + max|p̃|). Zero exactly at the optimum; needs no support guess
  (a tiny positive weight of an interior-point answer counts as its size, not as a wrong support).
- objective_gap: gᵀp − min_k g_k ≥ f(p) − f(p*) (the Frank–Wolfe duality gap).
- error bounds: ½‖p − p*‖²_H ≤ gap gives ‖p − p*‖ ≤ √(2·gap/λ) and ‖z_q − z_q*‖ ≤ √(2·gap); and p
  is the exact solution for a linear term b + δ (δ = μ on the support, min(μ, 0) off it), so
  ‖p − p*‖ ≤ ‖δ‖/λ and ‖z_q − z_q*‖ ≤ ‖δ‖/√λ. The smaller of each pair is reported.

**Lasso** (f(w) = ½‖z − Eᵀw‖² + α‖w‖₁ + ½ρ‖w‖², optionally w ≥ 0). With g = E(z_q − z) + ρw, the
signed form u± = max(±w, 0) with multipliers μ± = α ± g:

- residual: max over k and both signs of |min(u±_k, μ±_k/s)|, s = ‖e‖max(‖e‖max + ‖z‖) + ρ + α.
- objective_gap: f(w) − D(θ̃), D the dual of f as a lasso on the design [E, √ρI] and input [z, 0],
  at the point θ̃ = t·[r, −√ρw], t = min(1, α/‖g‖∞) (``nonneg``: α/max(−g)⁺), r = z − z_q. Written
  as ½(1 − t)²(‖r‖² + ρ‖w‖²) + t·gᵀw + α‖w‖₁ (each part exact at the optimum, where it is 0;
  ½‖z‖² − ½‖z − θ‖² lost ~ε‖z‖² to cancellation). The plain lasso's dual point, used before,
  left ½ρ‖w‖² in the gap at the optimum.
- error bounds: ‖z_q − z_q*‖² + ρ‖w − w*‖² ≤ 2·gap, so ‖z_q − z_q*‖ ≤ √(2·gap) and
  ‖w − w*‖ ≤ √(2·gap/ρ) (``inf`` without a ridge: the lasso need not be strongly convex, z_q* is
  unique but w* may not be); floored at the rounding of z_q − z as for SCQ (‖η‖ = 4ε(‖z‖ + ‖z_q‖)
  on z_q, ‖η‖/√ρ on w).

Off the simplex and rounding (docs/math.md §7): a p with 1ᵀp = c ≠ 1 is certified on the face
1ᵀx = c (gap_c = gᵀp − c·min g) plus the distance between the two faces' optima, |1 − c|·√(s/λ)
on p and |1 − c|·√s on z_q (:func:`error_bounds`); and a bound is never below what the
measurement, made in the compute dtype, can resolve (:func:`with_rounding_floor`). The residual
cannot fall below about ε·√D relative (~1e-7 in float32).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..problems import code_scores, max_code_norm, nearest_code, row_scale
from .engine import blocks, fused
from .solution import SparseWeights, Weights, combine, densify


class Certificate(NamedTuple):
    """Per-vector measurements, each ``(N,)`` in the compute dtype."""

    residual: torch.Tensor
    objective_gap: torch.Tensor
    error_bound: torch.Tensor
    quantized_error_bound: torch.Tensor


def _rows(t, b: slice):
    """Rows ``b`` of weights (dense or :class:`SparseWeights`) or of a per-row tensor; ``None`` stays."""
    if isinstance(t, SparseWeights):
        return SparseWeights(t.indices[b], t.values[b], t.num_codes)
    return None if t is None else t[b]


def _in_row_blocks(certify_block, N: int, K: int) -> Certificate:
    """A certificate measured a block of rows at a time (``certify_block(rows)``), where (N, K) is
    past the block budget (:mod:`.engine.blocks`): its (N, K) buffers are then one block's."""
    parts = [certify_block(b) for b in blocks.row_blocks(N, K)]
    return Certificate(*blocks.cat_rows(parts))


def _ncp(u: torch.Tensor, mu_scaled: torch.Tensor) -> torch.Tensor:
    """|min(u, μ/s)| per entry: zero iff u ≥ 0, μ ≥ 0 and u·μ = 0."""
    return torch.minimum(u, mu_scaled).abs()


def _ncp_(u: torch.Tensor, mu_scaled: torch.Tensor) -> torch.Tensor:
    """:func:`_ncp` written into ``mu_scaled``."""
    return torch.minimum(u, mu_scaled, out=mu_scaled).abs_()


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_k a_k b_k per row (N,), without an (N, K) product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class Sizes(NamedTuple):
    """‖z‖ per row (N,) and ‖e‖max (0-dim): the row scale s and the rounding floor are made of them."""

    z_norm: torch.Tensor
    e_max: torch.Tensor


def sizes_of(z: torch.Tensor, codebook: torch.Tensor) -> Sizes:
    return Sizes(torch.linalg.vector_norm(z.detach(), dim=-1), max_code_norm(codebook.detach()))


def scq_scale(z: torch.Tensor, codebook: torch.Tensor, lam: float, target: Optional[torch.Tensor],
              sizes: Optional[Sizes] = None) -> torch.Tensor:
    """The residual's scale s of each row (N,) (see the module doc); ``sizes``: :func:`sizes_of`
    (z, codebook), where the caller has them."""
    sizes = sizes_of(z, codebook) if sizes is None else sizes
    return row_scale(z, sizes.e_max, lam * (1 + (1.0 if target is None else target.detach().abs().amax(-1))),
                     sizes.z_norm)


def error_bounds(gap_c: torch.Tensor, delta: torch.Tensor, total: torch.Tensor, lam: float,
                 scale: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """SCQ's bounds on ‖p − p*‖ and ‖z_q − z_q*‖ (module doc; ``cpu_kernels._bounds_row``) from
    the Frank–Wolfe gap on the face 1ᵀx = c, c = ``total`` = 1ᵀp (``gap_c`` = gᵀp − c·min g), and
    ‖δ‖: min(√(2·gap_c/λ), ‖δ‖/λ) + |1 − c|·√(s/λ) and min(√(2·gap_c), ‖δ‖/√λ) + |1 − c|·√s;
    inf where c ≤ 0."""
    off = (1 - total).abs()
    gap_c = gap_c.clamp_min(0)
    error = torch.minimum((2 * gap_c / lam).sqrt(), delta / lam) + off * (scale / lam).sqrt()
    q_error = torch.minimum((2 * gap_c).sqrt(), delta / math.sqrt(lam)) + off * scale.sqrt()
    nowhere = total <= 0
    return error.masked_fill(nowhere, math.inf), q_error.masked_fill(nowhere, math.inf)


def with_rounding_floor(cert: Certificate, sizes: Sizes, lam: float,
                        entry_scale: Optional[torch.Tensor] = None) -> Certificate:
    """``cert`` with SCQ's error bounds raised to what its measurement can resolve (module doc),
    ε of the compute dtype (negligible in float64):

    - g = E(z_q − z) from one product: the rounding of z_q − z acts as a perturbation η of z,
      ‖η‖ ≤ 4ε(‖z‖ + ‖e‖max) allowed, which moves z_q* by at most ‖η‖ (z ↦ z_q* is a proximal
      map: non-expansive) and p* by at most ‖η‖/(2√λ); p's own rounding adds ε.
    - g from products of codes with codes and with z (``entry_scale`` s given: pgd's compiled
      rounds): each entry rounds on its own, by up to ~ε·s, a perturbation of b that moves p* by
      up to ~ε·s/λ and z_q* by ~ε·s/√λ; allowed twice that.
    """
    # In few ops (each a launch on a GPU): ‖z‖ + ‖e‖max (the sizes s was made of) once, scaled in place.
    eps = torch.finfo(cert.error_bound.dtype).eps
    size = sizes.z_norm + sizes.e_max
    p_floor = size.mul(4 * eps / math.sqrt(lam)).add_(4 * eps)
    q_floor = size.mul_(4 * eps)  # ‖η‖
    if entry_scale is not None:
        p_floor = torch.maximum(p_floor, entry_scale.mul(2 * eps / lam).add_(2 * eps))
        q_floor = torch.maximum(q_floor, entry_scale.mul(2 * eps / math.sqrt(lam)))
    return cert._replace(error_bound=torch.maximum(cert.error_bound, p_floor),
                         quantized_error_bound=torch.maximum(cert.quantized_error_bound, q_floor))


@torch.no_grad()
def certify_scq(weights: Weights, z: torch.Tensor, codebook: torch.Tensor, lam: float,
                target: Optional[torch.Tensor], dense: Optional[torch.Tensor] = None,
                nearest: Optional[torch.Tensor] = None) -> Certificate:
    """The SCQ certificate of ``weights`` for inputs ``z (N, D)``; ``target`` ``None`` means the
    one-hot nearest code, found exactly as the methods find it (``nearest`` (N,): those codes,
    where the method has them already, found by the same formula: one GEMM less). ``dense``: the
    weights already densified, if the caller has them."""
    # Written for memory: at most two (N, K) buffers beside p (g, which becomes μ in place, and
    # one scratch), since at K = 16384 each is a gigabyte per 16384 vectors; sparse weights without
    # ``dense``: g alone (:func:`_certify_scq_sparse`). Past the block budget, a block of rows at a time.
    z, codebook = z.detach(), codebook.detach()
    if not blocks.fits(z.shape[0], codebook.shape[0]):
        return _in_row_blocks(lambda b: certify_scq(_rows(weights, b), z[b], codebook, lam, _rows(target, b),
                                                    _rows(dense, b), _rows(nearest, b)), z.shape[0], codebook.shape[0])
    if target is None and nearest is None:  # before g: its scores and their temporary are gone when g is made
        nearest = nearest_code(code_scores(z, codebook), codebook)
    zq = combine(weights, codebook).detach()
    g = code_scores(zq - z, codebook)
    sizes = sizes_of(z, codebook)
    scale = scq_scale(z, codebook, lam, target, sizes)
    if dense is None and isinstance(weights, SparseWeights):
        return with_rounding_floor(_certify_scq_sparse(g, weights.indices, weights.values.detach().to(g.dtype), nearest,
                                                       None if target is None else target.detach(), lam, scale),
                                   sizes, lam)
    p = (densify(weights) if dense is None else dense).detach()
    # The CPU: every measurement below in one compiled pass per row.
    compiled = fused.scq_certificate(g, p, nearest if target is None else None,
                                     None if target is None else target.detach(), lam, scale)
    if compiled is not None:
        return with_rounding_floor(Certificate(*compiled), sizes, lam)
    g.add_(p, alpha=lam)
    if target is None:
        g.scatter_add_(1, nearest.unsqueeze(1), torch.full_like(g[:, :1], -lam))
    else:
        g.sub_(target.detach(), alpha=lam)
    gp = _rowdot(g, p)
    total = p.sum(-1)
    g_min = g.amin(-1)
    gap = (gp - g_min).clamp_min(0)
    mu = g.sub_(gp.unsqueeze(-1))  # g + ν with ν = −gᵀp, in place
    scratch = torch.div(mu, scale.unsqueeze(-1))
    residual = torch.maximum(_ncp_(p, scratch).amax(-1), (total - 1).abs())
    # δ: μ on the support, its negative part off it; ‖δ‖² = ‖min(μ, 0)‖² + ‖max(μ, 0) on S‖².
    torch.clamp_max(mu, 0, out=scratch)
    delta_sq = _rowdot(scratch, scratch)
    torch.clamp_min(mu, 0, out=scratch).masked_fill_(p <= 0, 0)
    delta = (delta_sq + _rowdot(scratch, scratch)).sqrt()
    error, q_error = error_bounds(gp - total * g_min, delta, total, lam, scale)
    return with_rounding_floor(Certificate(residual, gap, error, q_error), sizes, lam)


def _coalesced(indices: torch.Tensor, values: torch.Tensor) -> "tuple[torch.Tensor, ...]":
    """Sparse rows (N, m) sorted by code: (codes, values, each slot's code's whole weight (its
    slots' sum, as ``SparseWeights.to_dense``), whether the slot is its code's first)."""
    code, order = indices.sort(dim=1)
    value = values.gather(1, order)
    first = torch.ones_like(code, dtype=torch.bool)
    first[:, 1:] = code[:, 1:] != code[:, :-1]
    group = first.cumsum(1) - 1
    weight = torch.zeros_like(value).scatter_add_(1, group, value).gather(1, group)
    return code, value, weight, first


def _certify_scq_sparse(g: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, nearest: Optional[torch.Tensor],
                        target: Optional[torch.Tensor], lam: float, scale: torch.Tensor) -> Certificate:
    """:func:`certify_scq`'s measurements for p given on its support (``indices``, ``values``
    (N, m); a code may repeat, its values summing, as ``SparseWeights.to_dense``), from
    g = E(z_q − z) (N, K), overwritten: no dense p. Off the support p_k = 0, so a code's terms
    depend on μ_k = g_k − gᵀp alone (the compiled pass's reading, ``cpu_kernels._certificate_row``):
    |min(0, μ_k/s)| ≤ gap/s in the residual (equal at g's minimum), μ_k² in ‖δ‖² where μ_k < 0; the
    support's terms come from its m slots, each code counted once. Fixed shapes, no host sync."""
    g.scatter_add_(1, indices, values * lam)  # g = E(z_q − z) + λ(p − p̃)
    if target is None:
        g.scatter_add_(1, nearest.unsqueeze(1), torch.full_like(g[:, :1], -lam))
    else:
        g.sub_(target, alpha=lam)
    code, value, weight, first = _coalesced(indices, values)
    g_s = g.gather(1, code)
    gp = (g_s * value).sum(-1)
    g_min = g.amin(-1)
    gap = (gp - g_min).clamp_min(0)
    mu_s = g_s - gp.unsqueeze(-1)
    on_support = first & (weight != 0)  # (a nan weight too: it reaches the residual below)
    residual = torch.maximum((value.sum(-1) - 1).abs(), gap / scale)
    residual = torch.maximum(residual, torch.where(on_support, _ncp(weight, mu_s / scale.unsqueeze(-1)), 0).amax(-1))
    # ‖δ‖² = ‖min(μ, 0)‖² over every code + ‖max(μ, 0)‖² on the support; μ in place of g.
    neg = g.sub_(gp.unsqueeze(-1)).clamp_max_(0)
    pos = torch.where(on_support & (weight > 0), mu_s.clamp_min(0), 0)
    delta = (_rowdot(neg, neg) + (pos * pos).sum(-1)).sqrt()
    total = value.sum(-1)
    error, q_error = error_bounds(gp - total * g_min, delta, total, lam, scale)
    return Certificate(residual, gap, error, q_error)


def _lasso_sweep(G, w, scale, alpha: float, ridge: float, nonneg: bool) -> "tuple[torch.Tensor, ...]":
    """The lasso certificate's per-row terms as torch ops (the compiled sweep's reference): the
    residual, ‖g‖∞ (``nonneg``: max(−g)⁺), Σ|w|, Σw² and Σw·g, g = G + ρw, each (N,). Written for
    memory: two (N, K) scratch buffers beside G and w, each sign's terms reduced before the
    other's are made (the plain expressions held 8 buffers at the peak)."""
    s = scale.unsqueeze(-1)
    mu = torch.add(G, w, alpha=ridge)  # g
    g_max = (-mu.amin(-1)).clamp_min(0) if nonneg else torch.maximum(mu.amax(-1), -mu.amin(-1))
    w_g = _rowdot(w, mu)
    mu.add_(alpha).div_(s)  # (α + g)/s
    u = w if nonneg else w.clamp_min(0)
    residual = torch.minimum(u, mu, out=mu).abs_().amax(-1)
    if not nonneg:  # the code's other sign: |min((−w)⁺, (α − g)/s)|
        torch.add(G, w, alpha=ridge, out=mu).neg_().add_(alpha).div_(s)
        torch.neg(w, out=u).clamp_min_(0)
        residual = torch.maximum(residual, torch.minimum(u, mu, out=mu).abs_().amax(-1))
    del mu, u
    return residual, g_max, torch.linalg.vector_norm(w, ord=1, dim=-1), _rowdot(w, w), w_g


def _lasso_sweep_sparse(G, indices, values, scale, alpha: float, ridge: float, nonneg: bool) -> "tuple[torch.Tensor, ...]":
    """:func:`_lasso_sweep` for w given on its support (``indices``, ``values`` (N, m); a code may
    repeat, its values summing), G overwritten: no dense w. Off the support w_k = 0 and g_k = G_k,
    so a code's residual term is max(|G_k| − α, 0)/s (``nonneg``: max(−G_k − α, 0)/s), its
    largest over the codes off the support one masked reduction; the support's terms come from
    its slots, each code counted once. Fixed shapes, no host sync."""
    code, _, weight, first = _coalesced(indices, values)
    on = first & (weight != 0)  # (a nan weight too: it reaches the sums below)
    g_s = G.gather(1, code) + ridge * weight
    off = G.neg_() if nonneg else G.abs_()
    off.scatter_reduce_(1, code, torch.where(on, float("-inf"), float("inf")).to(G.dtype), reduce="amin")
    s = scale.unsqueeze(-1)
    terms = _ncp(weight if nonneg else weight.clamp_min(0), (alpha + g_s) / s)
    if not nonneg:
        terms = torch.maximum(terms, _ncp((-weight).clamp_min(0), (alpha - g_s) / s))
    off_max = off.amax(-1)  # the codes off the support: g_k = G_k
    residual = torch.maximum((off_max - alpha).clamp_min(0) / scale, torch.where(on, terms, 0).amax(-1))
    g_max = torch.maximum(off_max, torch.where(on, -g_s if nonneg else g_s.abs(), -math.inf).amax(-1))
    counted = torch.where(first, weight, 0)
    return (residual, g_max.clamp_min(0) if nonneg else g_max, counted.abs().sum(-1), (counted * counted).sum(-1),
            (counted * g_s).sum(-1))


@torch.no_grad()
def certify_lasso(weights: Weights, z: torch.Tensor, codebook: torch.Tensor, alpha: float, nonneg: bool,
                  ridge: float = 0.0, dense: Optional[torch.Tensor] = None) -> Certificate:
    """The lasso certificate of ``weights`` (see the module doc); ``dense`` as for :func:`certify_scq`.
    Sparse weights without ``dense`` are read as they are (no (N, K) tensor of them)."""
    z, codebook = z.detach(), codebook.detach()
    if not blocks.fits(z.shape[0], codebook.shape[0]):  # (a block of rows at a time: module doc)
        return _in_row_blocks(lambda b: certify_lasso(_rows(weights, b), z[b], codebook, alpha, nonneg, ridge,
                                                      _rows(dense, b)), z.shape[0], codebook.shape[0])
    zq = combine(weights, codebook).detach()
    r = z - zq
    G = code_scores(-r, codebook)  # E(z_q − z)
    sizes = sizes_of(z, codebook)
    scale = row_scale(z, sizes.e_max, ridge + alpha, sizes.z_norm)
    # The per-row sweep over K in one compiled pass where there is one (CPU), else torch ops;
    # sparse weights are read on their support either way.
    w = weights if dense is None else dense
    sparse = isinstance(w, SparseWeights)
    swept = fused.lasso_certificate(G, w if sparse else w.detach(), scale, alpha, ridge, nonneg)
    if swept is None and sparse:
        swept = _lasso_sweep_sparse(G, w.indices, w.values.detach().to(G.dtype), scale, alpha, ridge, nonneg)
    residual, g_max, w_abs, w_sq, w_g = _lasso_sweep(G, w.detach(), scale, alpha, ridge, nonneg) if swept is None \
        else swept
    # The gap to the elastic net's dual point t·r̃ (module doc), in a form without the
    # cancellation of ½‖z‖² against ½‖z − θ‖² (float32 lost ~ε‖z‖² to it): zero at the optimum.
    t = torch.clamp(alpha / g_max.clamp_min(torch.finfo(r.dtype).tiny), max=1.0)
    gap = (0.5 * (1 - t) ** 2 * (_rowdot(r, r) + ridge * w_sq) + t * w_g + alpha * w_abs).clamp_min(0)
    error = (2 * gap / ridge).sqrt() if ridge else torch.full_like(gap, math.inf)
    cert = Certificate(residual, gap, error, (2 * gap).sqrt())
    # Rounding (docs/math.md §7): that of z_q − z is a perturbation η of z; z ↦ z_q* is a
    # proximal map (non-expansive) and w* by at most ‖η‖/(2√ρ).
    eps = torch.finfo(gap.dtype).eps
    eta = torch.linalg.vector_norm(zq, dim=-1).add_(sizes.z_norm).mul_(4 * eps)
    return cert._replace(error_bound=torch.maximum(error, eta / math.sqrt(ridge)) if ridge else error,
                         quantized_error_bound=torch.maximum(cert.quantized_error_bound, eta))
