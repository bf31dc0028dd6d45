r"""Sparse soft vector quantization (SVQ), Chen et al. 2023 (MATH.md §5).

Sparse regression of each input on a large codebook, z_q = Eᵀw:

- ``solver="mlp"`` (the paper's released code): w = W₂·ReLU(W₁z + b₁) + b₂, hidden width 128
  (capped at K), output K; the codebook frozen at a random init; no auxiliary loss (the paper's
  only pressure towards sparse weights is its MAE training loss). ``relu_output=True`` adds
  a ReLU on w.
- ``solver="lasso"``: the exact problem the MLP amortizes, w* = argmin ½‖z − Eᵀw‖² + α‖w‖₁
  (w ≥ 0 with ``nonneg``), by :func:`scq.solve_lasso` (``method="pgd"``), with a KKT backward.

Image feature maps are the caller's to flatten: ``(B, C, H, W)`` → ``x.permute(0, 2, 3, 1)`` →
``(B, H, W, C)`` (or ``.flatten(1, 2)`` for ``(B, H·W, C)``), quantize with ``dim=C``, and permute
back.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v
from ..solvers.lasso import LASSO_METHODS, check_alpha, lasso_dispatch
from ..solvers.options import check_options
from ..solvers.registry import SolverInfo
from ..solvers.sparse import SparseWeights
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
        lasso_method: ``"pgd"`` (default) or ``"exact"`` (cvxpylayers).
        **solver_options: passed to :func:`scq.solve_lasso`.

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
        **solver_options,
    ):
        super().__init__(dim, codebook_size, init=init, learnable_codebook=not freeze_codebook)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if lasso_method not in LASSO_METHODS:
            raise ValueError(f"lasso_method must be one of {tuple(LASSO_METHODS)}, got {lasso_method!r}")
        self.solver = solver
        self.hidden = min(v.check_positive_int("hidden", hidden), codebook_size)
        self.relu_output = bool(relu_output)
        self.alpha = check_alpha(alpha)
        self.nonneg = bool(nonneg)
        self.lasso_method = lasso_method
        if solver == "lasso":
            check_options(f"solve_lasso(method={lasso_method!r})", LASSO_METHODS[lasso_method], solver_options)
        elif solver_options:
            raise TypeError(f"solver='mlp' takes no solver options, got {sorted(solver_options)}")
        self.solver_options = solver_options
        self.last_info: SolverInfo | None = None
        if solver == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, codebook_size))

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
            solution, self.last_info = lasso_dispatch(flat, E, self.alpha, self.nonneg, self.lasso_method, self.solver_options)
            if isinstance(solution, SparseWeights):
                quantized, weights = solution.combine(E), solution.to_dense()
            else:
                quantized, weights = solution @ E, solution
        indices = weights.detach().abs().argmax(-1) if weights.shape[0] else weights.new_zeros(0, dtype=torch.long)
        loss = flat.new_zeros(())
        return self._output(quantized, weights, indices, loss, batch_shape, x.dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", solver={self.solver!r}, frozen={not self.codebook.requires_grad}"
        if self.solver == "mlp":
            return s + f", hidden={self.hidden}, relu_output={self.relu_output}"
        return s + f", alpha={self.alpha}, nonneg={self.nonneg}, lasso_method={self.lasso_method!r}"
