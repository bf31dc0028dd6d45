"""The tables of solve methods: ``solve_scq(method=NAME)`` and ``solve_lasso(method=NAME)`` look NAME up here.

One table type serves both problems. A method is a function on validated 2-D inputs in the
compute dtype (``z (N, D)``, ``codebook (K, D)``), called as

- SCQ:   ``fn(z, codebook, lam, target, **options)``, ``target (N, K)`` or ``None`` (the one-hot
  nearest code);
- lasso: ``fn(z, codebook, alpha, nonneg, **options)``;

returning the weights (a dense ``(N, K)`` tensor or :class:`~scq.SparseWeights`), optionally with a
:class:`SolverInfo` of its own diagnostics. The method never judges its own answer: the front
door (:mod:`scq.solvers.dispatch`) measures the certificate of every answer
(:mod:`scq.solvers.certificate`) and derives ``converged`` from it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = ["check_options", "SolverInfo", "Method", "MethodTable", "SCQ_METHODS", "LASSO_METHODS", "register_method",
           "get_method", "available_methods", "describe_method"]

# Certificate tolerances (relative KKT residual, docs/math.md §7) a method is judged by when the
# caller gives no ``tol``. Rounding alone leaves ~1e-7 (float32) and ~1e-15 (float64) relative.
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def default_tol(dtype: torch.dtype) -> float:
    return DEFAULT_TOL.get(dtype, DEFAULT_TOL[torch.float32])


@dataclass
class SolverInfo:
    """What a solve reports besides its weights: the certificate of the answer it returned.

    Attributes:
        method: the method's registry name.
        iterations: iterations (or active-set rounds) the solver ran; 0 for one-shot methods.
        residual: the largest relative KKT residual over the batch, measured on the returned
            weights the same way for every method (docs/math.md §7); ``nan`` if never measured.
        converged: ``residual <= tol``, derived from the measurement, never set by a method.
        tol: the tolerance ``converged`` was judged by.
        objective_gap: largest certified bound on f(p) − f(p*) over the batch (f the problem's
            objective), from the duality gap.
        error_bound: largest certified bound on ‖p − p*‖₂ (SCQ: from λ-strong convexity; the
            lasso: from its ridge, ``inf`` without one).
        quantized_error_bound: largest certified bound on ‖z_q − z_q*‖₂.
        extra: per-vector tensors and method diagnostics (``residuals``, ``converged_mask``,
            ``support_size``, the solver's own counters).
    """

    method: str
    iterations: int = 0
    residual: float = float("nan")
    converged: bool = False
    tol: float = float("nan")
    objective_gap: float = float("nan")
    error_bound: float = float("nan")
    quantized_error_bound: float = float("nan")
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered method. ``exact``: it claims the exact solution, so a failed certificate
    warns (approximate methods report their residual without warning)."""

    name: str
    fn: Callable
    doc: str
    exact: bool = True
    tol: Optional[float] = None  # default certificate tolerance, if looser than the dtype's
    validate: Optional[Callable[..., None]] = None  # checks option values, given as keywords

    def default_tol(self, dtype: torch.dtype) -> float:
        return max(default_tol(dtype), self.tol or 0.0)


class MethodTable:
    """Name → :class:`Method` for one problem (``"scq"`` or ``"lasso"``)."""

    def __init__(self, problem: str, caller: str):
        self.problem = problem
        self.caller = caller  # how errors name the entry point, e.g. "solve_scq"
        self._methods: dict[str, Method] = {}

    def register(self, name: str, doc: str = "", *, exact: bool = True, tol: Optional[float] = None,
                 validate: Optional[Callable[..., None]] = None) -> Callable[[Callable], Callable]:
        """Decorator adding ``fn`` under ``name``, with a one-line description. ``exact``: the
        method claims the exact solution (a failed certificate warns); ``tol``: its default
        certificate tolerance where looser than the dtype's (e.g. a cone solver's accuracy);
        ``validate``: called with the options a caller gives (as keywords) where they enter
        (``solve_scq``/``solve_lasso``, a module's constructor), raising on a bad value."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"method name must be a non-empty str, got {name!r}")

        def decorator(fn: Callable) -> Callable:
            if name in self._methods:
                raise ValueError(f"a {self.problem} method named {name!r} is already registered")
            self._methods[name] = Method(name, fn, doc, bool(exact), tol, validate)
            return fn

        return decorator

    def unregister(self, name: str) -> None:
        self._methods.pop(name, None)

    def get(self, name: object) -> Method:
        if not isinstance(name, str):
            raise TypeError(f"method must be a str, got {type(name).__name__}")
        try:
            return self._methods[name]
        except KeyError:
            raise ValueError(f"unknown method {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._methods)


SCQ_METHODS = MethodTable("scq", "solve_scq")
LASSO_METHODS = MethodTable("lasso", "solve_lasso")
_TABLES = {"scq": SCQ_METHODS, "lasso": LASSO_METHODS}


def _table(problem: str) -> MethodTable:
    try:
        return _TABLES[problem]
    except KeyError:
        raise ValueError(f"problem must be one of {tuple(_TABLES)}, got {problem!r}") from None


def register_method(name: str, doc: str = "", *, exact: bool = True, tol: Optional[float] = None,
                    problem: str = "scq", validate: Optional[Callable[..., None]] = None
                    ) -> Callable[[Callable], Callable]:
    """Decorator registering an SCQ method (or, with ``problem="lasso"``, a lasso method); see
    :meth:`MethodTable.register`."""
    return _table(problem).register(name, doc, exact=exact, tol=tol, validate=validate)


def get_method(name: str, problem: str = "scq") -> Method:
    return _table(problem).get(name)


def available_methods(problem: str = "scq") -> tuple[str, ...]:
    """The registered method names for ``problem`` (``"scq"`` or ``"lasso"``), in registration order."""
    return _table(problem).names()


def describe_method(name: str, problem: str = "scq") -> str:
    """The one-line description a method was registered with."""
    return _table(problem).get(name).doc


# Unknown keyword options are reported by name, with the ones the method accepts.
@functools.lru_cache(maxsize=None)
def keyword_options(fn) -> tuple:
    """The keyword-only parameters of a method function (cached)."""
    params = inspect.signature(fn).parameters
    return tuple(name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_options(caller: str, fn, options: dict) -> None:
    allowed = keyword_options(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{caller} got unknown options {unknown}; it accepts {list(allowed)}")
