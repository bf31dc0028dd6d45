r"""Sparse soft vector quantization (SVQ), Chen et al. 2023 (docs/math.md §5).

Sparse regression of each input on a large codebook, z_q = Eᵀw:

- ``solver="mlp"`` (the paper's released code): w = W₂·ReLU(W₁z + b₁) + b₂, hidden width 128
  (capped at K), output K; no auxiliary loss (the paper's only pressure towards sparse weights is
  its MAE training loss). The released code's switches are here: ``hid_relu`` (the hidden ReLU),
  ``out_relu`` (a ReLU on w; also ``relu_output``), ``nonlinear=False`` (one linear layer
  w = Wz + b), ``freeze_projection`` (the MLP not trained), and its codebook inits. Its
  configurations mostly learn the codebook (``freeze_codebook=False``) and mostly use
  ``init="kaiming"``; the defaults here are the paper's text (frozen, normal).
- ``solver="lasso"``: the exact problem the MLP amortizes, w* = argmin ½‖z − Eᵀw‖² + α‖w‖₁
  (w ≥ 0 with ``nonneg``), by :func:`scq.solve_lasso`'s methods, with a KKT backward.

Image feature maps ``(B, C, H, W)``, as the released code takes them: ``channel_dim=1``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _validation as v
from ..functional import check_alpha
from ..solvers.dispatch import LassoProblem, check_method, solve
from ..solvers.registry import LASSO_METHODS, SolverInfo
from ..solvers.solution import combine, hard_codes
from .base import HasSolverOptions, Quantizer, _Quantized, split_features

SOLVERS = ("mlp", "lasso")



class SVQ(HasSolverOptions, Quantizer):
    """Sparse soft vector quantization.

    Args:
        dim: input dimension D. codebook_size: K (10,000 in the paper).
        hidden: the MLP's hidden width (capped at K).
        freeze_codebook: keep the codebook fixed at its init (the paper's text; the released
            configurations mostly learn it).
        init: codebook init: ``"normal"`` (N(0, 1)), ``"kaiming"`` (U(±√(6/D)), the released
            code's), ``"kaiming_linear"`` (U(±1/√D)), ``"xavier"``, ``"trunc_normal"``,
            ``"orthogonal"``, ``"sparse"``, ``"uniform"``.
        solver: ``"mlp"`` (amortized, as in the paper) or ``"lasso"`` (exact sparse regression).
        relu_output: ReLU on the MLP's output (non-negative weights); ``out_relu`` is the
            released code's name for it.
        hid_relu: ReLU between the MLP's layers (the released default; False: two linear maps).
        nonlinear: False for the released single-linear variant, w = Wz + b.
        freeze_projection: the MLP's parameters are not trained.
        alpha: α > 0 of the lasso. nonneg: non-negative lasso weights.
        lasso_method: a name from ``scq.available_methods("lasso")``: ``"pgd"`` (default) or
            ``"exact"`` (cvxpylayers).
        strict: raise when a lasso solve fails its certificate (default: warn, flag ``last_info``).
        **kwargs: the training features of :class:`~scq.quantizers.base.Quantizer` (``heads``,
            ``separate_codebook_per_head`` (one MLP per head too), ``kmeans_init``,
            ``dead_code_threshold`` (usage: each vector's |w| normalized to sum 1), ``decay``,
            ``use_cosine_sim``, ``channel_dim``, ``sync_distributed``), then options passed to
            the lasso method (see :func:`scq.solve_lasso`).

    ``forward(x)`` returns :class:`QuantizerOutput`: ``weights`` the regression weights,
    ``indices`` the code of largest |weight|, ``loss`` zero (SVQ has no auxiliary loss).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int = 10000,
        *,
        hidden: int = 128,
        freeze_codebook: bool = True,
        init: str = "normal",
        solver: str = "mlp",
        relu_output: bool = False,
        out_relu: Optional[bool] = None,
        hid_relu: bool = True,
        nonlinear: bool = True,
        freeze_projection: bool = False,
        alpha: float = 0.1,
        nonneg: bool = False,
        lasso_method: str = "pgd",
        strict: bool = False,
        **kwargs,
    ):
        features, solver_options = split_features(kwargs)
        if "learnable_codebook" in features:
            raise TypeError("SVQ takes freeze_codebook, not learnable_codebook")
        super().__init__(dim, codebook_size, init=init, learnable_codebook=not freeze_codebook, **features)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        self.hidden = min(v.check_positive_int("hidden", hidden), codebook_size)
        self.relu_output = bool(relu_output) if out_relu is None else bool(out_relu)
        self.hid_relu = bool(hid_relu)
        self.nonlinear = bool(nonlinear)
        self.alpha = check_alpha(alpha)
        self.nonneg = bool(nonneg)
        self.strict = bool(strict)
        self.solver_options = solver_options
        self.lasso_method = lasso_method
        self.last_info: SolverInfo | None = None
        if solver == "mlp":
            mlps = [self._make_mlp() for _ in range(self.num_codebooks)]
            self.mlp = mlps[0] if self.num_codebooks == 1 else nn.ModuleList(mlps)
            self.mlp.requires_grad_(not freeze_projection)

    def _make_mlp(self) -> nn.Sequential:
        d, K = self.codebook_dim, self.codebook_size
        if self.nonlinear:
            layers = [nn.Linear(d, self.hidden), nn.ReLU() if self.hid_relu else nn.Identity(), nn.Linear(self.hidden, K)]
        else:
            layers = [nn.Linear(d, K)]
        if self.relu_output:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @property
    def _certified_forward(self) -> bool:  # the lasso goes through dispatch.solve; the MLP does not
        return self.solver != "mlp"

    @property
    def freeze_projection(self) -> bool:
        return self.solver == "mlp" and not any(p.requires_grad for p in self.mlp.parameters())

    def _check_options(self, options: dict) -> None:
        if self.solver == "mlp" and options:
            raise TypeError(f"solver='mlp' takes no solver options, got {sorted(options)}")
        if "_lasso_method" in self.__dict__:  # (in the constructor, the method's setter checks them next)
            check_method(LASSO_METHODS, self.lasso_method, options)

    @property
    def lasso_method(self) -> str:
        return self._lasso_method.name

    @lasso_method.setter
    def lasso_method(self, name: str) -> None:
        # Checked when set (the edge), with the options it will be called with (their values too).
        try:
            LASSO_METHODS.get(name)
        except ValueError as err:
            raise ValueError(f"lasso_method: {err}") from None
        self._lasso_method = check_method(LASSO_METHODS, name, self.solver_options)

    def _quantize(self, vectors: torch.Tensor, codebook: torch.Tensor, book: int) -> _Quantized:
        if self.solver == "mlp":
            mlp = self.mlp if self.num_codebooks == 1 else self.mlp[book]
            # The MLP computes in its parameters' dtype (as any nn.Module, autocast included); the
            # result joins the inputs'.
            weights = mlp(vectors.to(mlp[0].weight.dtype)).to(vectors.dtype)
            quantized = weights @ codebook
        else:
            with torch.autocast(device_type=vectors.device.type, enabled=False):
                solution, weights, info = solve(LassoProblem(self.alpha, self.nonneg), self._lasso_method,
                                                vectors, codebook, self.solver_options, strict=self.strict,
                                                name="x", decide_threads=False,
                                                dense=self.return_weights == "dense")
                quantized = combine(solution, codebook)
            if self.return_weights != "dense":
                weights = solution
            if book == 0 or self.last_info is None or not info.residual <= self.last_info.residual:
                self.last_info = info
        indices = hard_codes(weights, by_magnitude=True)
        return _Quantized(quantized, weights, indices, vectors.new_zeros(()))

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", solver={self.solver!r}, frozen={not self.codebook.requires_grad}"
        if self.solver == "mlp":
            s += f", hidden={self.hidden}, relu_output={self.relu_output}"
            if not self.hid_relu:
                s += ", hid_relu=False"
            if not self.nonlinear:
                s += ", nonlinear=False"
            if self.freeze_projection:
                s += ", freeze_projection=True"
            return s
        return s + f", alpha={self.alpha}, nonneg={self.nonneg}, lasso_method={self.lasso_method!r}"
