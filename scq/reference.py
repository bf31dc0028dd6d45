"""Independent reference solutions with cvxpy and Clarabel at tight tolerances (SCS where
Clarabel fails numerically).

Each answer is then finished exactly on the support (and signs) read off the cone solver's and
kept where the problem's KKT conditions certify it, else flagged with a RuntimeWarning.

Slow (CPU, float64, a cone program per chunk of vectors) and not differentiable: the yardstick
that tests and benchmarks measure every fast solver against. Independent of the
``exact`` method, which goes through cvxpylayers, diffcp and SCS.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500)
FALLBACK = dict(eps_abs=1e-9, eps_rel=1e-9, max_iters=200_000)  # SCS, where Clarabel fails


def _as_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.float64).numpy()


def _solve(problem) -> None:
    """Clarabel at tight tolerances; where it fails numerically (it did on 4096 codes close to the
    inputs, at its default tolerances too), SCS at 1e-9, which solved those. The answers are
    polished and certified after (:func:`_polish_simplex`, :func:`_polish_lasso`): there, SCS's
    agreed with pgd's to 1e-14."""
    import cvxpy as cp

    failures = []
    for solver, options in ((cp.CLARABEL, TIGHT), (cp.SCS, FALLBACK)):
        try:
            with warnings.catch_warnings():
                # An "optimal_inaccurate" answer is taken, then polished and certified: where that
                # fails the reference says so itself (a RuntimeWarning), so cvxpy's word is noise.
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                problem.solve(solver=solver, **options)
        except cp.error.SolverError as err:
            failures.append(f"{solver}: {err}")
            continue
        if problem.status in ("optimal", "optimal_inaccurate"):
            return
        failures.append(f"{solver}: status {problem.status}")
    raise RuntimeError(f"reference solve failed: {'; '.join(failures)}")


def reference_scq(
    z: torch.Tensor, codebook: torch.Tensor, lam: float, target: Optional[torch.Tensor] = None, chunk: int = 1
) -> torch.Tensor:
    """argmin_{p ∈ Δ} ‖z − Eᵀp‖² + λ‖p − p̃‖² for rows of ``z`` (N, D); float64, CPU.

    ``chunk`` vectors share one cone program. Clarabel's tolerances apply to the whole program,
    so one vector per program (the default) is the accurate choice: ~1e-9 on the weights. Each
    answer is then polished on its support in numpy and kept only where the KKT certificate holds
    (~1e-14 there; Clarabel's own answer elsewhere).
    """
    import cvxpy as cp

    from .problems import resolve_target

    Z, E = z.detach().reshape(-1, z.shape[-1]).to(torch.float64).cpu(), codebook.detach().to(torch.float64).cpu()
    T = resolve_target(Z, E, None if target is None else target.reshape(-1, E.shape[0]).to(torch.float64).cpu())
    Zn, En, Tn = _as_np(Z), _as_np(E), _as_np(T)
    out = np.zeros((Zn.shape[0], En.shape[0]))
    programs: dict = {}  # one per chunk height: built and canonicalized once, then re-solved for each chunk
    for start in range(0, Zn.shape[0], chunk):
        zc, tc = Zn[start : start + chunk], Tn[start : start + chunk]
        if tc.shape not in programs:
            # Parameters (DPP): cvxpy compiles the program once and then only swaps in each chunk's
            # z and p̃; a new Problem per chunk spent ~90% of the reference's time compiling.
            P, z_par, t_par = cp.Variable(tc.shape), cp.Parameter(zc.shape), cp.Parameter(tc.shape)
            objective = cp.sum_squares(P @ En - z_par) + lam * cp.sum_squares(P - t_par)
            programs[tc.shape] = (cp.Problem(cp.Minimize(objective), [P >= 0, cp.sum(P, axis=1) == 1]), P, z_par, t_par)
        problem, P, z_par, t_par = programs[tc.shape]
        z_par.value, t_par.value = zc, tc
        _solve(problem)
        out[start : start + chunk] = P.value
    # Clarabel stops a hair outside the simplex: project the rounding away.
    out = np.clip(out, 0, None)
    out /= out.sum(1, keepdims=True)
    out = np.stack([_polish_simplex(p, zn, En, lam, tn) for p, zn, tn in zip(out, Zn, Tn)])
    return torch.from_numpy(out).reshape(*z.shape[:-1], En.shape[0])


def _polish_simplex(p: np.ndarray, z: np.ndarray, E: np.ndarray, lam: float, target: np.ndarray) -> np.ndarray:
    """Finish an interior-point answer exactly: guess the support from ``p``, solve the KKT
    equality system on it (dense numpy), and keep the result only if it certifies optimality
    (p_S > 0, multipliers ≥ 0 off S, docs/math.md §2). Where no guess certifies (the cone solver's
    answer too loose to read the support off: 200 codes on a line at D = 1 left KKT residuals of
    1e-3), a textbook active set finishes from p's largest weight (:func:`_active_set_simplex`);
    if even that fails, ``p`` with a RuntimeWarning, never silently."""
    K = E.shape[0]
    H = E @ E.T + lam * np.eye(K)
    b = E @ z + lam * target
    tol = 1e-11 * (np.abs(H).max() + np.abs(b).max())
    for thresh in (1e-6, 1e-7, 1e-8, 1e-5, 1e-4):
        q, mu = _solve_on_support(H, b, np.flatnonzero(p > thresh * p.max()))
        if q is not None and (mu >= -tol).all():
            return q
    q = _active_set_simplex(H, b, int(np.argmax(p)), tol)
    if q is not None:
        return q
    warnings.warn("scq.reference: a reference answer failed its KKT certificate; it is the cone solver's, "
                  "accurate to its tolerance only", RuntimeWarning, stacklevel=3)
    return p


def _on_face(H: np.ndarray, b: np.ndarray, S: np.ndarray) -> "tuple[np.ndarray, float]":
    """(q_S, ν): the minimizer of ½pᵀHp − bᵀp with p zero off S and 1ᵀp = 1 (signs free), from
    the KKT equalities H_SS q_S + ν1 = b_S, 1ᵀq_S = 1."""
    A = np.zeros((len(S) + 1, len(S) + 1))
    A[:-1, :-1] = H[np.ix_(S, S)]
    A[:-1, -1] = A[-1, :-1] = 1
    sol = np.linalg.solve(A, np.append(b[S], 1.0))
    return sol[:-1], sol[-1]


def _solve_on_support(H: np.ndarray, b: np.ndarray, S: np.ndarray):
    """(q, μ): the minimizer on the face {p_S > 0, 1ᵀp = 1} and every code's multiplier
    μ = Hq − b + ν (zero on S); (None, None) where q_S is not positive."""
    q_S, nu = _on_face(H, b, S)
    if not (q_S > 0).all():
        return None, None
    q = np.zeros(H.shape[0])
    q[S] = q_S
    return q, H @ q - b + nu


def _active_set_simplex(H: np.ndarray, b: np.ndarray, start: int, tol: float, max_iter: int = 10_000):
    """argmin ½pᵀHp − bᵀp over the simplex (H positive definite) by the primal active-set method
    (Nocedal & Wright, Algorithm 16.3), from the vertex ``start``: solve on the support S; if that
    leaves the simplex, step to its boundary and drop the code that hit zero; else add the code
    of most negative multiplier, or stop where none is below −``tol``. Dense numpy, one vector,
    apart from scq's engine. None if it does not finish in ``max_iter`` steps."""
    K = H.shape[0]
    p = np.zeros(K)
    p[start] = 1.0
    S = [start]
    for _ in range(max_iter):
        idx = np.array(S)
        q_S, nu = _on_face(H, b, idx)
        if (q_S > 0).all():
            p = np.zeros(K)
            p[idx] = q_S
            mu = H @ p - b + nu
            mu[idx] = np.inf
            k = int(np.argmin(mu))
            if mu[k] >= -tol:
                return p
            S.append(k)
        else:  # move towards q_S until a weight reaches zero, and drop that code
            d = q_S - p[idx]
            shrinking = d < 0
            steps = np.where(shrinking, p[idx] / np.where(shrinking, -d, 1.0), np.inf)
            j = int(np.argmin(steps))
            p[idx] += min(1.0, steps[j]) * d
            p[idx[j]] = 0.0
            S.pop(j)
    return None


def reference_scq_grads(
    z: torch.Tensor, codebook: torch.Tensor, lam: float, target: torch.Tensor, weights: torch.Tensor,
    grad_weights: torch.Tensor, support_tol: float = 1e-13,
) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """Vector-Jacobian products of the SCQ solution, written densely in numpy from docs/math.md §4.

    Given the solution ``weights`` (N, K) and ``grad_weights`` = ∂ℓ/∂p, returns (∂ℓ/∂z, ∂ℓ/∂E,
    ∂ℓ/∂p̃), one vector at a time, with the support read off ``weights > support_tol`` (pass the
    polished weights of :func:`reference_scq`, which are exactly zero off the support).
    """
    Z, E, T = _as_np(z), _as_np(codebook), _as_np(target)
    P, Gw = _as_np(weights), _as_np(grad_weights)
    N, K = P.shape
    dZ, dE, dT = np.zeros_like(Z), np.zeros_like(E), np.zeros_like(T)
    H = E @ E.T + lam * np.eye(K)
    for n in range(N):
        S = np.flatnonzero(P[n] > support_tol)
        Hinv = np.linalg.inv(H[np.ix_(S, S)])
        one = np.ones(len(S))
        M = Hinv - np.outer(Hinv @ one, one @ Hinv) / (one @ Hinv @ one)
        v = np.zeros(K)
        v[S] = M @ Gw[n, S]
        vE = v @ E
        dZ[n] = vE
        dT[n] = lam * v
        dE += np.outer(v, Z[n] - P[n] @ E) - np.outer(P[n], vE)
    as_t = lambda a: torch.from_numpy(a)
    return as_t(dZ), as_t(dE), as_t(dT)


def reference_lasso(z: torch.Tensor, codebook: torch.Tensor, alpha: float, nonneg: bool = False) -> torch.Tensor:
    """argmin_w ½‖z − Eᵀw‖² + α‖w‖₁ (w ≥ 0 if ``nonneg``) per row, with cvxpy + Clarabel; float64.

    Each answer is then polished on its support and signs in numpy and kept only where the
    lasso's KKT conditions certify it (:func:`_polish_lasso`; ~1e-14 there, where Clarabel's own
    answers stopped at ~1e-9 and, on an elastic net written as a lasso, at "optimal_inaccurate").
    """
    import cvxpy as cp

    Zn = _as_np(z.reshape(-1, z.shape[-1]))
    En = _as_np(codebook)
    out = np.zeros((Zn.shape[0], En.shape[0]))
    w, z_par = cp.Variable(En.shape[0], nonneg=nonneg), cp.Parameter(En.shape[1])
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(En.T @ w - z_par) + alpha * cp.norm1(w)))  # compiled once
    H = En @ En.T  # (the polish's, once for every row)
    for n, zn in enumerate(Zn):
        z_par.value = zn
        _solve(problem)
        out[n] = _polish_lasso(w.value, zn, En, alpha, nonneg, H)
    return torch.from_numpy(out).reshape(*z.shape[:-1], En.shape[0])


def _polish_lasso(w: np.ndarray, z: np.ndarray, E: np.ndarray, alpha: float, nonneg: bool,
                  H: Optional[np.ndarray] = None) -> np.ndarray:
    """Finish a cone solver's lasso answer exactly, as :func:`_polish_simplex` does SCQ's: guess
    the support S and signs σ from ``w``, solve the KKT equalities on them, H_SS w_S = b_S − ασ_S
    (H = EEᵀ, b = Ez; dense numpy), and keep the result only where it certifies optimality: signs
    σ on S, |g_k| ≤ α off S (g = Hw − b; w ≥ 0: g_k ≥ −α). The guesses: the weights above
    thresholds relative to the largest, then the j largest for j = 0, 1, … (w = 0 among them:
    optimal where max|b| ≤ α). Where none certifies, ``w`` with a RuntimeWarning, never silently.
    ``H``: EEᵀ, where the caller has it."""
    H = E @ E.T if H is None else H
    b = E @ z
    tol = 1e-11 * (np.abs(H).max() * max(np.abs(w).sum(), 1.0) + np.abs(b).max() + alpha)
    top = np.abs(w).max()
    guesses = [np.flatnonzero(np.abs(w) > t * top) for t in (1e-6, 1e-7, 1e-8, 1e-5, 1e-4)] if top > 0 else []
    # Then the j largest |w|, j = 0, 1, …: an "optimal_inaccurate" answer (an elastic net written as
    # a lasso) had weights of 7e-5 and 9e-7 off a support of 4 codes of 0.2–0.5, which no
    # threshold relative to the largest separates.
    order = np.argsort(-np.abs(w), kind="stable")
    # (Up to D codes: some optimal answer has no more, and each guess costs a least-squares solve.)
    guesses += [order[:j] for j in range(min(int((np.abs(w) > 0).sum()), E.shape[1]) + 1)]
    tried = set()
    for S in guesses:
        key = tuple(np.sort(S))
        if key in tried:  # (thresholds and the j largest often give the same support)
            continue
        tried.add(key)
        sigma = np.sign(w[S])
        q = np.zeros_like(w)
        if len(S):
            # Least squares, not a solve: where S holds dependent codes (collinear ones, e and −e
            # sharing a weight the cone solver split), H_SS is singular and the lasso's solution
            # not unique, but the equalities are consistent and their minimum-norm solution is one.
            q[S] = np.linalg.lstsq(H[np.ix_(S, S)], b[S] - alpha * sigma, rcond=None)[0]
            if not (np.sign(q[S]) == sigma).all():
                continue
        g = H @ q - b
        off = np.ones(len(w), dtype=bool)
        off[S] = False
        dual = (g[off] >= -alpha - tol).all() and (nonneg or (g[off] <= alpha + tol).all())
        if dual and (np.abs(g[S] + alpha * sigma) <= tol).all():
            return q
    warnings.warn("scq.reference: a lasso reference answer failed its KKT certificate; it is the cone solver's, "
                  "accurate to its tolerance only", RuntimeWarning, stacklevel=3)
    return w
