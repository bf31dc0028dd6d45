r"""``method="pgd"``: the exact SCQ solution, fast, with a KKT backward (docs/math.md §2, §4).

    p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²  =  argmin_{p ∈ Δ_K} ½pᵀHp − bᵀp,
    H = EEᵀ + λI,  b = Ez + λp̃.

Projected-gradient (FISTA) steps and an exact active-set polish on a working set of codes grown
from the KKT certificate: the engine of :mod:`scq.solvers.engine` with the simplex constraint,
ridge λ and no ℓ₁ term. It starts at the one-hot nearest code (the VQ solution, feasible), adds
the codes whose multipliers are most negative, solves the restricted problem exactly, and stops
when the certificate holds over all K codes. Converges to the exact solution (not the paper's
relaxation), in the input's dtype, on CPU and CUDA. Working memory: O(N·m + K·D) beside the
GEMMs' (n, K) outputs, which are made a block of rows at a time past
``engine.blocks.GEMM_BLOCK_ELEMENTS`` entries (256 MB in float32; the torch path adds (N, m, m)
systems).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .certificate import Certificate, scq_scale, sizes_of, with_rounding_floor
from .engine import QPForm, solve
from .engine.working_set import FW_STEPS, check_engine_options, engine_hint, make_options
from .registry import SolverInfo, register_method
from .solution import SparseWeights


@register_method("pgd", "projected gradient (FISTA) + exact active-set polish on a working set grown from the KKT "
                        "certificate; exact, CPU/CUDA, KKT backward", validate=check_engine_options)
def solve_pgd(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    target: Optional[torch.Tensor],
    *,
    tol: Optional[float] = None,
    max_rounds: int = 30,
    max_inner: int = 100,
    working_set: int = 8,
    add_per_round: int = 8,
    compact: bool = True,
    pg_iters: int = 10,
    fw_steps: int = FW_STEPS,
) -> "tuple[SparseWeights, SolverInfo]":
    """Options:
        tol: the relative KKT tolerance the answer is certified at (default 1e-10 in float64, 1e-5
            in float32; docs/math.md §7 says what it guarantees on p and z_q). Without one, a
            float32 solve works to 1e-6, so that its weights come within ~1e-5 of the exact ones
            (``working_set.engine_tol``).
        max_rounds: certificate rounds over all K codes; if they run out, ``info.converged`` is
            False and a RuntimeWarning says so.
        max_inner: active-set iterations per round on the working set.
        working_set: initial working-set size m (grows when the support needs more). 8 rather
            than 16 since each row solves on its own valid slots: 2–10% faster on every codebook
            of the runtime benchmark (N = 1024–4096, D = 16–64), the rounds about the same.
        add_per_round: codes examined per round for entry into the working set (doubled each
            round in which some vector filled every slot, so large supports take few rounds).
        compact: after each convergence check, work on the unfinished vectors only (gathered by
            index at the check's host sync). ``False`` keeps the whole batch in lockstep with
            fixed shapes, at the cost of re-solving finished vectors.
        pg_iters: FISTA steps on the working set before each exact active-set polish (0: polish
            from the previous point directly).
        fw_steps: Frank–Wolfe steps over all K codes that open each vector's solve where the
            compiled CPU rounds run on the codebook's Gram matrix (``working_set.uses_codebook_gram``);
            the first working set is then FW's codes, with their weights, and the most violating
            codes there, ``max(working_set, 24)`` in all. From the one-hot start the exact supports'
            codes rank far down, and vectors took ~4 rounds to find them; after 10 steps half to
            three quarters finish in one (0.73–0.95× the time, docs/math.md §2). A vector whose
            ``fw_steps`` steps each found a new code (a larger support) takes up to two blocks of
            as many more, with a slot more in W per step. 0: the one-hot start and its
            ``working_set − 1`` most violating codes. Elsewhere (CUDA, no Gram matrix) unused.

    Returns the solution as :class:`SparseWeights`.
    """
    opts = make_options(z.dtype, tol, max_rounds, max_inner, working_set, add_per_round, compact, pg_iters, fw_steps)
    form = QPForm(simplex=True, signed=False, ridge=lam, l1=0.0, start_bonus=lam)
    diagnostics: dict = {}
    kept: dict = {}  # the certificate's sizes and row scale, where the rounds measure with them: its rounding floor

    def certify_scale() -> torch.Tensor:
        kept["sizes"] = sizes = sizes_of(z, codebook)
        kept["scale"] = scq_scale(z, codebook, lam, target, sizes)
        return kept["scale"]

    values, indices, _ = solve(z, codebook, None if target is None else lam * target, form, opts, diagnostics,
                               certify_scale=certify_scale)
    measured = diagnostics.pop("certificate", None)  # the rounds' own measurement (compiled path only)
    info = SolverInfo("pgd", iterations=diagnostics.pop("iterations"), extra=diagnostics)
    if measured is not None:
        info.extra["certificate"] = with_rounding_floor(Certificate(*measured), kept["sizes"], lam, kept["scale"])
    # (A partial, not a lambda: picklable, so that torch.save of a module keeps its last_info.)
    info.extra["hint"] = functools.partial(engine_hint, diagnostics, opts)
    return SparseWeights(indices, values, codebook.shape[0]), info
