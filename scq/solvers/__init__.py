"""SCQ solve methods. Importing this package registers them: ``exact``, ``relaxed``, ``pgd``."""

from . import exact, pgd, relaxed  # noqa: F401  (registration side effect)
from .registry import SolverInfo, available_methods, describe_method, get_method, register_method
from .sparse import SparseWeights

__all__ = ["SolverInfo", "SparseWeights", "available_methods", "describe_method", "get_method", "register_method"]
