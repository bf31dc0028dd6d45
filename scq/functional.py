r"""Functional entry point: :func:`solve_scq`.

    p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²

Validates the arguments once, flattens the leading batch dimensions, picks the compute dtype and
dispatches to a method from the registry (``scq.available_methods()``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from . import _validation as v
from .solvers.options import check_options
from .solvers.registry import SolverInfo, get_method
from .solvers.sparse import SparseWeights

__all__ = ["solve_scq"]

DEFAULT_METHOD = "pgd"


class Prepared(NamedTuple):
    z: torch.Tensor  # (N, D) in the compute dtype
    codebook: torch.Tensor  # (K, D) in the compute dtype
    lam: float
    target: Optional[torch.Tensor]  # (N, K) or None
    batch_shape: torch.Size
    out_dtype: torch.dtype


def prepare(z: torch.Tensor, codebook: torch.Tensor, lam: float, target: Optional[torch.Tensor], *,
            name: str = "z") -> Prepared:
    """Validate the arguments of an SCQ solve and flatten them to the 2-D form methods take;
    ``name`` is what errors call the inputs."""
    codebook = v.check_codebook(codebook)
    z = v.check_inputs(z, codebook, name)
    lam = v.check_positive("lam", lam)
    K, D = codebook.shape
    batch_shape = z.shape[:-1]
    if target is not None:
        target = v.check_target(target, batch_shape, K, z)
    dtype = v.compute_dtype(z, codebook, *(() if target is None else (target,)))
    return Prepared(
        z.reshape(-1, D).to(dtype),
        codebook.to(dtype),
        lam,
        None if target is None else target.reshape(-1, K).to(dtype),
        batch_shape,
        z.dtype,
    )


def dispatch(method: str, prepared: Prepared, options: dict) -> "tuple[Union[torch.Tensor, SparseWeights], SolverInfo]":
    """Run a registered method on prepared inputs; the result may be dense or sparse."""
    fn = get_method(method)
    check_options(f"method={method!r}", fn, options)
    z, E = prepared.z, prepared.codebook
    if z.shape[0] == 0:
        # Keep the (empty) result on the autograd graph so downstream losses still backprop.
        return (z @ E.transpose(0, 1)) * 0, SolverInfo(method)
    return fn(z, E, prepared.lam, prepared.target, **options)


def solve_scq(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    *,
    target: Optional[torch.Tensor] = None,
    method: str = DEFAULT_METHOD,
    return_info: bool = False,
    **options,
) -> Union[torch.Tensor, "tuple[torch.Tensor, SolverInfo]"]:
    r"""Soft convex quantization weights: the best convex combination of codes for each input.

    Solves, for every vector ``z`` of the batch,

        p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²,

    with Δ_K the probability simplex and ``p̃`` the target (by default the one-hot nearest code).

    Args:
        z: inputs ``(..., D)``.
        codebook: codes ``E`` as rows, ``(K, D)``.
        lam: λ > 0, the pull towards the target; larger λ gives sparser weights closer to ``p̃``.
        target: ``(..., K)`` or ``None`` (the one-hot nearest code, without gradient).
        method: a name from ``scq.available_methods()``: ``"exact"`` (cvxpylayers reference),
            ``"relaxed"`` (the paper's one-shot relaxation, approximate), ``"pgd"`` (exact, fast).
        return_info: also return the :class:`~scq.SolverInfo` of the solve.
        **options: method-specific options (e.g. ``tol``, ``max_rounds`` for ``pgd``).

    Returns:
        weights ``(..., K)`` on the simplex, in the inputs' dtype (half types are computed in
        float32), differentiable w.r.t. ``z``, ``codebook`` and ``target``; and the info if asked.
    """
    get_method(method)  # an unknown method is reported before anything else
    prepared = prepare(z, codebook, lam, target)
    weights, info = dispatch(method, prepared, options)
    if isinstance(weights, SparseWeights):
        weights = weights.to_dense()
    K = prepared.codebook.shape[0]
    weights = weights.to(prepared.out_dtype).reshape(*prepared.batch_shape, K)
    return (weights, info) if return_info else weights
