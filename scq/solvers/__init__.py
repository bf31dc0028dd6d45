"""Solvers of both problems, behind one front door (:mod:`.dispatch`).

Importing this package registers the methods: SCQ ``exact``, ``relaxed``, ``pgd``; lasso ``pgd``,
``exact``. Layout: :mod:`.registry` (method tables, :class:`SolverInfo`), :mod:`.dispatch` (the one
path: prepare → solve → certify), :mod:`.certificate` (the KKT certificate of any answer),
:mod:`.solution` (dense or sparse weights), one file per method, :mod:`.cvxpy_layers` (all cvxpy
code) and :mod:`.engine` (the working-set / active-set / FISTA numerics of the ``pgd`` methods).
"""

# Registration order is the order ``available_methods`` lists.
from . import exact, relaxed, pgd  # noqa: F401,I001  (registration side effect)
from . import lasso_pgd, lasso_exact  # noqa: F401,I001
from .registry import SolverInfo, available_methods, describe_method, get_method, register_method
from .solution import SparseWeights

__all__ = ["SolverInfo", "SparseWeights", "available_methods", "describe_method", "get_method", "register_method"]
