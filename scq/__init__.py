"""scq: differentiable quantizers built on convex optimization.

Functional API: :func:`solve_scq`, :func:`solve_lasso`, :func:`project_simplex`, :func:`codebook_usage`.
Modules: :class:`VQ` (baseline), :class:`SCQ` (soft convex quantization), :class:`SVQ` (sparse
soft VQ), :class:`ResidualQuantizer` (a stack of them on residuals); each returns a
:class:`QuantizerOutput` ``(quantized, weights, indices, loss)``. Training features
(``kmeans_init``, ``dead_code_threshold``, ``heads``, ``use_cosine_sim``, VQ's ``ema_update``)
are constructor options, and work under ``torch.distributed``. :func:`kmeans` is the k-means
they use.
"""

from .functional import solve_lasso, solve_scq
from .kmeans import kmeans
from .metrics import CodebookUsage, codebook_usage
from .quantizers import SCQ, SVQ, VQ, Quantizer, QuantizerOutput, ResidualQuantizer
from .simplex import project_simplex
from .solvers import SolverInfo, SparseWeights, available_methods, describe_method, register_method

__version__ = "0.1.0"

__all__ = [
    "solve_scq",
    "solve_lasso",
    "project_simplex",
    "available_methods",
    "describe_method",
    "register_method",
    "SolverInfo",
    "SparseWeights",
    "VQ",
    "SCQ",
    "SVQ",
    "ResidualQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "kmeans",
    "codebook_usage",
    "CodebookUsage",
]
