"""The table of SCQ solve methods: ``solve_scq(method=NAME)`` looks NAME up here.

A method is a function ``fn(z, codebook, lam, target, **options) -> (weights, info)`` on
validated 2-D inputs ``z (N, D)``, ``codebook (K, D)``, ``target (N, K)`` or ``None`` (then the
one-hot nearest code), returning weights ``(N, K)`` in ``z``'s dtype and a :class:`SolverInfo`.
New methods register themselves with :func:`register_method`; nothing else needs editing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["SolverInfo", "register_method", "get_method", "available_methods", "describe_method"]


@dataclass
class SolverInfo:
    """What a solve reports besides its weights.

    Attributes:
        method: the method's registry name.
        iterations: iterations (or active-set rounds) the solver ran; 0 for one-shot methods.
        residual: the largest optimality residual over the batch (KKT violation for ``pgd``,
            solver-reported for ``exact``, ``nan`` where the method is approximate by design).
        converged: whether every vector met the tolerance.
        extra: method-specific diagnostics (e.g. support sizes, per-vector flags).
    """

    method: str
    iterations: int = 0
    residual: float = float("nan")
    converged: bool = True
    extra: dict = field(default_factory=dict)


MethodFn = Callable[..., "tuple[torch.Tensor, SolverInfo]"]
_METHODS: dict[str, MethodFn] = {}
_DOCS: dict[str, str] = {}


def register_method(name: str, doc: str = "") -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn`` to the table under ``name`` (with a one-line description)."""

    def decorator(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"an SCQ method named {name!r} is already registered")
        _METHODS[name] = fn
        _DOCS[name] = doc
        return fn

    return decorator


def get_method(name: str) -> MethodFn:
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None


def available_methods() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_METHODS)


def describe_method(name: str) -> str:
    """The one-line description a method was registered with."""
    get_method(name)
    return _DOCS[name]
