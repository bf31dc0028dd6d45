r"""Soft convex quantization as a layer (MATH.md §2).

    p* = argmin_{p ∈ Δ_K} ‖x − Eᵀp‖² + λ‖p − p̃‖²,   quantized = Eᵀp*

No straight-through estimator: gradients flow through the solver to the input and the codebook
(implicit differentiation of the optimality conditions).
"""

from __future__ import annotations

import torch

from .. import _validation as v
from ..functional import DEFAULT_METHOD, dispatch, prepare
from ..solvers.options import check_options
from ..solvers.registry import SolverInfo, get_method
from ..solvers.sparse import SparseWeights
from .base import Quantizer, QuantizerOutput, commitment_loss


class SCQ(Quantizer):
    """Soft convex quantization: each input becomes the best convex combination of codes.

    Args:
        dim: input dimension D (inputs are ``(..., dim)``).
        codebook_size: number of codes K.
        lam: λ > 0. Small λ: closer to the convex hull projection (more codes, lower error);
            large λ: closer to the one-hot nearest code (sparser, VQ-like).
        method: a solve method from ``scq.available_methods()`` (``"pgd"``: exact and fast;
            ``"relaxed"``: the paper's one-shot relaxation; ``"exact"``: cvxpylayers, slow).
        beta: weight of the commitment term in ``loss``.
        init: codebook initialization (``"normal"``, ``"uniform"``, ``"kaiming"``).
        **solver_options: passed to the method (e.g. ``tol``, ``max_rounds``).

    ``forward(x)`` returns :class:`QuantizerOutput` with ``weights`` p* on the simplex and
    ``indices`` their argmax. ``loss = ‖sg(x) − q‖² + β‖x − sg(q)‖²`` (means over elements): the
    first term moves the codebook (its hull) towards the inputs, the second keeps the encoder's
    outputs near the hull. ``quantized`` itself is differentiable in x and the codebook, so the
    loss is optional, unlike VQ's. The last solve's :class:`~scq.SolverInfo` is ``last_info``.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        lam: float = 0.1,
        method: str = DEFAULT_METHOD,
        beta: float = 0.25,
        init: str = "normal",
        **solver_options,
    ):
        super().__init__(dim, codebook_size, init=init)
        self.lam = v.check_positive("lam", lam)
        check_options(f"method={method!r}", get_method(method), solver_options)
        self.method = method
        self.beta = v.check_nonnegative("beta", beta)
        self.solver_options = solver_options
        self.last_info: SolverInfo | None = None

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        flat, batch_shape = self._flatten(x, check_finite=False)
        prepared = prepare(flat, self._codebook(flat.dtype), self.lam, None, name="x")
        solution, self.last_info = dispatch(self.method, prepared, self.solver_options)
        if isinstance(solution, SparseWeights):
            quantized = solution.combine(prepared.codebook)
            weights, indices = solution.to_dense(), solution.argmax()
        else:
            quantized = solution @ prepared.codebook
            weights = solution
            indices = solution.detach().argmax(-1) if solution.shape[0] else solution.new_zeros(0, dtype=torch.long)
        loss = commitment_loss(flat, quantized, self.beta)
        return self._output(quantized, weights, indices, loss, batch_shape, x.dtype)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={val!r}" for k, val in self.solver_options.items())
        return super().extra_repr() + f", lam={self.lam}, method={self.method!r}, beta={self.beta}{opts}"
