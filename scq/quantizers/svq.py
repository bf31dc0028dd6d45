r"""Sparse soft vector quantization (SVQ), Chen et al. 2023 (docs/math.md §5).

Sparse regression of each input on a large codebook, z_q = Eᵀw:

- ``solver="mlp"`` (the paper's released code): w = W₂·ReLU(W₁z + b₁) + b₂, hidden width 128
  (capped at K), output K; the codebook frozen at a random init; no auxiliary loss (the paper's
  only pressure towards sparse weights is its MAE training loss). ``relu_output=True`` adds
  a ReLU on w.
- ``solver="lasso"``: the exact problem the MLP amortizes, w* = argmin ½‖z − Eᵀw‖² + α‖w‖₁
  (w ≥ 0 with ``nonneg``), by :func:`scq.solve_lasso`'s methods, with a KKT backward.

Image feature maps are the caller's to flatten: ``(B, C, H, W)`` → ``x.permute(0, 2, 3, 1)`` →
``(B, H, W, C)`` (or ``.flatten(1, 2)`` for ``(B, H·W, C)``), quantize with ``dim=C``, and permute
back.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v
from ..functional import check_alpha
from ..solvers.dispatch import LassoProblem, check_method, solve
from ..solvers.registry import LASSO_METHODS, SolverInfo
from ..solvers.solution import combine, hard_codes
from .base import Quantizer, QuantizerOutput

SOLVERS = ("mlp", "lasso")


class SVQ(Quantizer):
    """Sparse soft vector quantization.

    Args:
        dim: input dimension D. codebook_size: K (10,000 in the paper).
        hidden: the MLP's hidden width (capped at K).
        freeze_codebook: keep the codebook fixed at its random init (the paper's choice).
        init: ``"normal"`` (N(0, 1)) or ``"kaiming"`` (also ``"uniform"``).
        solver: ``"mlp"`` (amortized, as in the paper) or ``"lasso"`` (exact sparse regression).
        relu_output: ReLU on the MLP's output (non-negative weights).
        alpha: α > 0 of the lasso. nonneg: non-negative lasso weights.
        lasso_method: a name from ``scq.available_methods("lasso")``: ``"pgd"`` (default) or
            ``"exact"`` (cvxpylayers).
        strict: raise when a lasso solve fails its certificate (default: warn, flag ``last_info``).
        **solver_options: passed to the lasso method (see :func:`scq.solve_lasso`).

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
        alpha: float = 0.1,
        nonneg: bool = False,
        lasso_method: str = "pgd",
        strict: bool = False,
        **solver_options,
    ):
        super().__init__(dim, codebook_size, init=init, learnable_codebook=not freeze_codebook)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        self.hidden = min(v.check_positive_int("hidden", hidden), codebook_size)
        self.relu_output = bool(relu_output)
        self.alpha = check_alpha(alpha)
        self.nonneg = bool(nonneg)
        self.strict = bool(strict)
        if solver == "mlp" and solver_options:
            raise TypeError(f"solver='mlp' takes no solver options, got {sorted(solver_options)}")
        self.solver_options = solver_options
        self.lasso_method = lasso_method
        self.last_info: SolverInfo | None = None
        if solver == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, codebook_size))

    @property
    def lasso_method(self) -> str:
        return self._lasso_method.name

    @lasso_method.setter
    def lasso_method(self, name: str) -> None:
        # Checked when set (the edge), with the options it will be called with.
        try:
            self._lasso_method = check_method(LASSO_METHODS, name, self.solver_options)
        except ValueError as err:
            raise ValueError(f"lasso_method: {err}") from None

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        flat, batch_shape = self._flatten(x)
        E = self._codebook(flat.dtype)
        if self.solver == "mlp":
            # The MLP computes in its parameters' dtype (as any nn.Module); the result joins flat's.
            weights = self.mlp(flat.to(self.mlp[0].weight.dtype)).to(flat.dtype)
            if self.relu_output:
                weights = torch.relu(weights)
            quantized = weights @ E
        else:
            with torch.autocast(device_type=flat.device.type, enabled=False):
                solution, weights, self.last_info = solve(LassoProblem(self.alpha, self.nonneg), self._lasso_method,
                                                          flat, E, self.solver_options, strict=self.strict)
                quantized = combine(solution, E)
        indices = hard_codes(weights, by_magnitude=True)
        loss = flat.new_zeros(())
        return self._output(quantized, weights, indices, loss, batch_shape, x.dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", solver={self.solver!r}, frozen={not self.codebook.requires_grad}"
        if self.solver == "mlp":
            return s + f", hidden={self.hidden}, relu_output={self.relu_output}"
        return s + f", alpha={self.alpha}, nonneg={self.nonneg}, lasso_method={self.lasso_method!r}"
