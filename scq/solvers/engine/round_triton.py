r"""A certificate round in three Triton launches (CUDA): the whole work on the working set W
(:func:`work_on_w`), then, after the round's GEMM, the entering scores (:func:`entering_scores`),
and after their top-k the round's end (:func:`end_of_round`: each row's verdict, the round's counts
for its one host read, the rows left, and the next W). The loop around them is
:func:`scq.solvers.engine.working_set._rounds_on_triton`: the batch's state stays in place, each
kernel reading the round's rows where they are (``rows``) and the end of the round writing their
next W over the old one, so that a round makes no gathers, write-backs or sorts of its own.

Per row, in one program (:func:`scq.solvers.engine.triton_kernels.round_rows`), the steps of
:func:`scq.solvers.engine.working_set._solve_on_w`, which the torch path takes as ~40 launches
a round (the gather of the codes, two batched products, the linear term, dtype copies, FISTA's step
and momentum, two kernels and z_q's product):

1. H = CCᵀ + ρI and b = Cz + linear from the codes E[code] (a tile of D at a time, ``tl.dot`` at
   IEEE precision), in the systems' dtype;
2. FISTA's warm start (:func:`~scq.solvers.engine.triton_kernels.fista_steps`), S = {u > 0};
3. the active set (:func:`~scq.solvers.engine.triton_kernels.active_set_solve`) and, for float32
   systems, the refinement on the support
   (:func:`~scq.solvers.engine.triton_kernels.refine_on_support`);
4. z_q − z (z_q = Σ_j u_j σ_j e_j), for the round's GEMM G = (z_q − z)Eᵀ.

The same arithmetic as the torch path, up to the order of sums (tests/test_fused.py runs it under
``TRITON_INTERPRET=1`` against the torch path). Used where the support is not capped (a ridge), on
the devices and widths :func:`scq.solvers.engine.triton_launch.fits` takes.
"""

from __future__ import annotations

import torch

from .active_set import DEGENERATE_SLACK, ActiveSetResult
from .active_set_triton import REFINE_TILE_D
from .triton_launch import LAUNCH_OPTIONS, lazy_kernel, num_warps, two_part

_KERNEL = None
# Columns of D per ``tl.dot`` of the Gram matrix (its inner dimension must be ≥ 16).
GRAM_TILE_D = 16


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself where its last dimension is contiguous (the kernels take each row's stride): W
    kept as a slice of a wider layout costs no copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _kernel():
    return lazy_kernel(globals(), "_KERNEL", "round_rows")


def work_on_w(E: torch.Tensor, code: torch.Tensor, sign: torch.Tensor, z: torch.Tensor,
              extra: "torch.Tensor | None", start: "torch.Tensor | None", u: torch.Tensor, s: torch.Tensor,
              valid: torch.Tensor, dual_tol: torch.Tensor, *, simplex: bool, ridge: float, l1: float, bonus: float,
              sys_dtype: torch.dtype, pg_iters: int, max_iter: int, refine: bool,
              rows: "torch.Tensor | None" = None) -> "tuple[ActiveSetResult, torch.Tensor]":
    """One launch for the round's rows: (the active set's result in ``sys_dtype``, z_q − z (n, D)
    in the inputs' dtype), each row's outputs at its place in the round. The round's rows are
    ``rows`` (n,) of the batch, read in place from ``code`` (N, m), ``sign``, ``u``, ``s``,
    ``valid``, ``z``, ``extra`` (N, K) or ``None``, ``start`` (N,) (the codes that get ``bonus``
    where ``extra`` is ``None``; else ``None``) and ``dual_tol``; ``None``: every row."""
    import triton

    m = code.shape[1]
    n = code.shape[0] if rows is None else rows.shape[0]
    D = E.shape[1]
    dev = z.device
    out_u = torch.empty(n, m, dtype=sys_dtype, device=dev)
    out_s = torch.empty(n, m, dtype=torch.int8, device=dev)
    out_nu = torch.empty(n, dtype=sys_dtype, device=dev)
    out_res = torch.empty(n, dtype=sys_dtype, device=dev)
    converged = torch.empty(n, dtype=torch.int8, device=dev)
    broken = torch.empty(n, dtype=torch.int8, device=dev)
    iterations = torch.zeros((), dtype=torch.int64, device=dev)
    diff = torch.empty(n, D, dtype=z.dtype, device=dev)
    if n:
        import triton.language as tl

        E, z = _unit_stride(E), _unit_stride(z)
        code, sign, u = _unit_stride(code), _unit_stride(sign), _unit_stride(u)
        s8, v8 = _unit_stride(s).view(torch.int8), _unit_stride(valid).view(torch.int8)
        has_extra, has_start = extra is not None, extra is None and start is not None and bonus != 0
        extra_t = extra.contiguous() if has_extra else z
        start_t = start.contiguous() if has_start else code
        tol = dual_tol.reshape(-1).to(sys_dtype).contiguous()
        has_rows = rows is not None
        rows_t = rows if has_rows else code
        block = max(16, triton.next_power_of_2(m))
        finfo = torch.finfo(sys_dtype)
        _kernel()[(n,)](E, z, code, sign, u, s8, v8, extra_t, start_t, tol, rows_t, out_u, out_s, out_nu, converged,
                        broken, iterations, out_res, diff,
                        m, D, int(max_iter), 16 * finfo.eps, finfo.tiny, DEGENERATE_SLACK, *two_part(ridge),
                        *two_part(bonus), *two_part(l1),
                        E.stride(0), z.stride(0), code.stride(0), sign.stride(0), u.stride(0), s8.stride(0),
                        v8.stride(0), extra_t.stride(0), out_u.stride(0), out_s.stride(0), diff.stride(0),
                        N_ITER=int(pg_iters), SIMPLEX=simplex, HAS_EXTRA=has_extra, HAS_START=has_start,
                        REFINE=refine, SYS_DTYPE=tl.float64 if sys_dtype == torch.float64 else tl.float32,
                        BLOCK=block, GRAM_D=GRAM_TILE_D, BLOCK_D=REFINE_TILE_D, HAS_ROWS=has_rows,
                        num_warps=num_warps(block), **LAUNCH_OPTIONS)
    # (The kernel stores 0/1 bytes: viewed as bools, no launch.)
    result = ActiveSetResult(out_u, out_s.view(torch.bool), out_nu, converged.view(torch.bool), iterations, out_res,
                             broken.view(torch.bool), refined=refine)
    return result, diff


_SCORES_KERNEL = None
# Codes per tile of the scores' sweep over K.
SCORES_TILE_K = 256


def _scores_kernel():
    return lazy_kernel(globals(), "_SCORES_KERNEL", "entering_scores_rows")


def entering_scores(G: torch.Tensor, code: torch.Tensor, sign: torch.Tensor, valid: torch.Tensor,
                    extra: "torch.Tensor | None", start: "torch.Tensor | None", *, bonus: float, signed: bool,
                    rows: "torch.Tensor | None" = None) -> torch.Tensor:
    """The round's entering scores (n, K) from its gradients G = E(z_q − z) (n, K), in one launch
    where the torch path takes ~8 (the linear term, the sign, the mask of W's codes): −(G − extra)
    (or less ``bonus`` at the ``start`` codes; |G − extra| for ``signed`` codes), −inf at the codes
    already in W; the caller takes their top-k. Unsigned: written over G, which is returned; signed:
    a new tensor (G is kept, for the entering signs). G's row i is the batch's row ``rows[i]``,
    whose W (``code``, ``sign``, ``valid``), ``extra`` and ``start`` are read in place (``None``:
    row i)."""
    import triton

    n, K = G.shape
    m = code.shape[1]
    score = torch.empty_like(G) if signed else G
    if n == 0:
        return score
    has_extra, has_start = extra is not None, extra is None and start is not None and bonus != 0
    extra_t = extra.contiguous() if has_extra else G
    start_t = start.contiguous() if has_start else code
    code, sign = _unit_stride(code), _unit_stride(sign)
    v8 = _unit_stride(valid).view(torch.int8)
    block = max(16, triton.next_power_of_2(m))
    _scores_kernel()[(n,)](G, score, code, sign, v8, extra_t, start_t, code if rows is None else rows, K, m,
                           *two_part(bonus), G.stride(0), score.stride(0), code.stride(0), sign.stride(0),
                           v8.stride(0), extra_t.stride(0), SIGNED=signed, HAS_EXTRA=has_extra, HAS_START=has_start,
                           BLOCK=block, BLOCK_K=SCORES_TILE_K, HAS_ROWS=rows is not None, num_warps=4,
                           **LAUNCH_OPTIONS)
    return score


_END_KERNEL = None
# The widest next W (m + entries examined) the end-of-round kernel lays out; wider: the torch path.
MAX_NEXT_WIDTH = 256


def _end_kernel():
    return lazy_kernel(globals(), "_END_KERNEL", "end_of_round_rows")


def end_of_round(worst: torch.Tensor, worst_code: torch.Tensor, new_sign: "torch.Tensor | None", res: ActiveSetResult,
                 dual_tol: torch.Tensor, allowance: torch.Tensor, code: torch.Tensor, sign: torch.Tensor,
                 u: torch.Tensor, s: torch.Tensor, valid: torch.Tensor, broken: torch.Tensor,
                 rows: "torch.Tensor | None", m: int, alpha: float) -> "tuple[torch.Tensor, torch.Tensor]":
    """The end of a certificate round for the round's rows in one launch, as the torch loop of
    :func:`scq.solvers.engine.working_set._forward` does it in ~40, in place: from the ``n_add``
    most violating codes outside W (``worst`` (n, n_add), descending; their codes and entering
    signs, ``None`` for unsigned codes) and the round's solve ``res``, each row's verdict (its
    tolerance ``dual_tol``, or on a degenerate face at least ``allowance`` (1,) in its dtype:
    :func:`scq.solvers.engine.working_set.verdict_tol`), its
    ``broken`` flag (N,), and its next W written over the old one in the batch's state ``code``,
    ``sign``, ``u``, ``s``, ``valid`` (N, capacity ≥ m + n_add; W is the first m slots): m + n_add
    slots, the support, the violators, the rest of the old W, then empty slots (the caller keeps
    as many as the widest row needs). The round's row i is the batch's row ``rows[i]`` (``None``:
    row i). Returns (the round's counts (4,) int64 on the device: unfinished rows, whether some
    row's last entry slot violates, the widest W needed, the most active-set iterations; the
    unfinished rows, the first ``counts[0]`` entries of an (n,) int64 tensor)."""
    import triton

    n, n_add = worst.shape
    width = m + n_add
    assert code.shape[1] >= width, "the state must be m + n_add wide"
    dev = code.device
    counts = torch.zeros(4, dtype=torch.int64, device=dev)
    next_rows = torch.empty(n, dtype=torch.int64, device=dev)
    if n:
        has_sign = new_sign is not None
        worst, worst_code = worst.contiguous(), worst_code.contiguous()
        new_sign = new_sign.contiguous() if has_sign else worst  # (not read without signs)
        weights, support = res.weights.contiguous(), res.support.contiguous().view(torch.int8)
        s8, v8 = s.view(torch.int8), valid.view(torch.int8)
        _end_kernel()[(n,)](worst, worst_code, new_sign, res.nu.contiguous(), dual_tol.reshape(-1).contiguous(),
                            res.residual.contiguous(), allowance,
                            res.converged.contiguous().view(torch.int8), res.broken.contiguous().view(torch.int8),
                            weights, support, res.iterations, code if rows is None else rows, code, sign, u, s8, v8,
                            broken.view(torch.int8), next_rows, counts, m, n_add, width, float(alpha),
                            worst.stride(0), weights.stride(0), support.stride(0), code.stride(0), sign.stride(0),
                            u.stride(0), s8.stride(0), v8.stride(0), BLOCK=max(16, triton.next_power_of_2(m)),
                            BLOCK_ADD=max(16, triton.next_power_of_2(n_add)),
                            BLOCK_W=max(16, triton.next_power_of_2(width)), HAS_SIGN=has_sign,
                            HAS_ROWS=rows is not None, num_warps=4, **LAUNCH_OPTIONS)
    return counts, next_rows
