r"""Soft convex quantization as a layer (docs/math.md §2).

    p* = argmin_{p ∈ Δ_K} ‖x − Eᵀp‖² + λ‖p − p̃‖²,   quantized = Eᵀp*

No straight-through estimator: gradients flow through the solver to the input and the codebook
(implicit differentiation of the optimality conditions).
"""

from __future__ import annotations

import torch

from .. import _validation as v
from ..functional import DEFAULT_METHOD
from ..solvers.dispatch import SCQProblem, check_method, solve
from ..solvers.registry import SCQ_METHODS, SolverInfo
from ..solvers.solution import combine, hard_codes
from .base import HasSolverOptions, Quantizer, _Quantized, commitment_loss, split_features


class SCQ(HasSolverOptions, Quantizer):
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
        strict: raise when a solve fails its certificate (default: warn, flag ``last_info``).
        **kwargs: the training features of :class:`~scq.quantizers.base.Quantizer` (``heads``,
            ``separate_codebook_per_head``, ``use_cosine_sim``, ``kmeans_init``, ``kmeans_iters``,
            ``dead_code_threshold`` (a code's usage is its weight mass), ``decay``,
            ``channel_dim``, ``sync_distributed``, ``learnable_codebook``, ``return_weights``);
            the rest are options of the method (e.g. ``tol``, ``max_rounds``).

    ``forward(x)`` returns :class:`QuantizerOutput` with ``weights`` p* on the simplex and
    ``indices`` their argmax. ``loss = ‖sg(x) − q‖² + β‖x − sg(q)‖²`` (means over elements): the
    first term moves the codebook (its hull) towards the inputs, the second keeps the encoder's
    outputs near the hull. ``quantized`` itself is differentiable in x and the codebook, so the
    loss is optional, unlike VQ's. The last solve's :class:`~scq.SolverInfo` (its certificate) is
    ``last_info``. Under ``torch.autocast`` the solve runs in float32 and the outputs come back in
    the input's dtype.
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
        strict: bool = False,
        **kwargs,
    ):
        features, solver_options = split_features(kwargs)
        super().__init__(dim, codebook_size, init=init, **features)
        self.solver_options = solver_options
        self.lam = lam
        self.method = method
        self.beta = v.check_nonnegative("beta", beta)
        self.strict = bool(strict)
        self.last_info: SolverInfo | None = None

    _certified_forward = True  # every forward goes through dispatch.solve

    # λ and the method are checked when set (here is the edge), not on every forward.
    @property
    def lam(self) -> float:
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        self._lam = v.check_positive("lam", value)

    @property
    def method(self) -> str:
        return self._method.name

    @method.setter
    def method(self, name: str) -> None:
        self._method = check_method(SCQ_METHODS, name, self.solver_options)

    def _check_options(self, options: dict) -> None:
        if "_method" in self.__dict__:  # (in the constructor, the method's setter checks them next)
            check_method(SCQ_METHODS, self.method, options)

    def _quantize(self, vectors: torch.Tensor, codebook: torch.Tensor, book: int) -> _Quantized:
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            solution, weights, info = solve(SCQProblem(self.lam), self._method, vectors, codebook,
                                            self.solver_options, strict=self.strict, name="x",
                                            decide_threads=False, dense=self.return_weights == "dense")
            quantized = combine(solution, codebook)
            loss = commitment_loss(vectors, quantized, self.beta)
        # With one codebook per head, last_info is the certificate of the worst head.
        if book == 0 or self.last_info is None or not info.residual <= self.last_info.residual:
            self.last_info = info
        # Sparse or no weights asked for: hand on the solver's own form; no dense copy was made.
        return _Quantized(quantized, weights if self.return_weights == "dense" else solution, hard_codes(solution), loss)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={val!r}" for k, val in self.solver_options.items())
        return super().extra_repr() + f", lam={self.lam}, method={self.method!r}, beta={self.beta}{opts}"
