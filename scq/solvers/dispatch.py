r"""The one path from a batch to a certified answer, shared by :func:`scq.solve_scq`,
:func:`scq.solve_lasso` and the quantizer modules:

    prepare (check at the edge, flatten, compute dtype) → solve (look the method up, run it with
    autocast off, measure its certificate, derive ``converged``, warn or raise) → the caller
    shapes the result (dense weights, or z_q straight from sparse ones).

A problem is a small object that knows its method table, how to call a method and how to
certify an answer: :class:`SCQProblem` and :class:`LassoProblem`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch

from .. import _validation as v
from .certificate import Certificate, certify_lasso, certify_scq
from .registry import LASSO_METHODS, SCQ_METHODS, Method, MethodTable, SolverInfo, check_options
from .solution import Weights, densify
from .threads import one_thread, wants_one_thread


class Batch(NamedTuple):
    """Validated inputs flattened to 2-D, in the compute dtype."""

    z: torch.Tensor  # (N, D)
    codebook: torch.Tensor  # (K, D)
    batch_shape: torch.Size
    out_dtype: torch.dtype


def prepare(z: torch.Tensor, codebook: torch.Tensor, *, name: str = "z", extra: tuple = ()) -> Batch:
    """Check ``z`` and ``codebook`` (types, shapes, device, finite values) and flatten ``z``.
    ``extra`` tensors (e.g. a target) join the dtype promotion."""
    codebook = v.check_codebook(codebook)
    z = v.check_inputs(z, codebook, name)
    dtype = v.compute_dtype(z, codebook, *extra)
    return Batch(z.reshape(-1, codebook.shape[1]).to(dtype), codebook.to(dtype), z.shape[:-1], z.dtype)


@dataclass(frozen=True)
class SCQProblem:
    """argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖² (``target`` (N, K) or ``None``: one-hot nearest code)."""

    lam: float
    target: Optional[torch.Tensor] = None
    table: ClassVar[MethodTable] = SCQ_METHODS

    def call(self, method: Method, z, codebook, options):
        return method.fn(z, codebook, self.lam, self.target, **options)

    def certify(self, weights, dense, z, codebook, info: SolverInfo) -> Certificate:
        # A method whose last rounds computed G = E(z_q − z) measured the certificate from it
        # already (pgd's compiled rounds; see certificate.py): no second GEMM.
        measured = info.extra.pop("certificate", None)
        if measured is not None:
            return measured
        # A method that found the nearest codes (p̃'s) with problems.nearest_code hands them on.
        nearest = info.extra.get("nearest") if self.target is None else None
        return certify_scq(weights, z, codebook, self.lam, self.target, dense=dense, nearest=nearest)


@dataclass(frozen=True)
class LassoProblem:
    """argmin_w ½‖z − Eᵀw‖² + α‖w‖₁ (w ≥ 0 with ``nonneg``); a method that adds a ridge ½ρ‖w‖²
    reports ρ as ``info.extra["ridge"]`` and is certified on that problem."""

    alpha: float
    nonneg: bool = False
    table: ClassVar[MethodTable] = LASSO_METHODS

    def call(self, method: Method, z, codebook, options):
        return method.fn(z, codebook, self.alpha, self.nonneg, **options)

    def certify(self, weights, dense, z, codebook, info: SolverInfo) -> Certificate:
        return certify_lasso(weights, z, codebook, self.alpha, self.nonneg, info.extra.get("ridge", 0.0), dense=dense)


def check_method(table: MethodTable, method: str, options: dict) -> Method:
    """The method, after checking that it accepts ``options`` and their values: ``tol``, every
    method's, here; the rest by the method's own ``validate``. Done once, at the edge
    (``solve_scq``/``solve_lasso``, a module's constructor or ``method`` setter), not per solve."""
    m = table.get(method)
    check_options(f"{table.caller}(method={method!r})", m.fn, options)
    if options.get("tol") is not None:
        v.check_positive("tol", options["tol"])
    if m.validate is not None:
        m.validate(**options)
    return m


def solve(problem, method: Method, z: torch.Tensor, codebook: torch.Tensor, options: dict, *,
          strict: bool = False, name: str = "z", decide_threads: bool = True, dense: bool = True
          ) -> "tuple[Weights, Optional[torch.Tensor], SolverInfo]":
    """Run ``method`` on validated 2-D inputs and certify its answer.

    Returns the method's weights (dense or :class:`SparseWeights`, for ``combine``), the same
    weights densified once, with autograd (the certificate reads them too; ``None`` with
    ``dense=False``, for callers that hand on sparse weights or none: no (N, K) tensor is made for
    them), and the info.

    ``converged`` is ``residual <= tol`` (``tol`` from the options, else the method's default).
    A method that claims exactness and fails its certificate raises a RuntimeWarning; with
    ``strict=True`` any uncertified answer raises a RuntimeError instead. One host sync.

    ``decide_threads``: pick the intra-op threads here (:mod:`scq.solvers.threads`); ``False``
    where the caller has (a quantizer's forward, :class:`~scq.solvers.threads.BackwardScope`).

    Non-finite ``z`` (called ``name`` in the error) or codebook values fail the solve or make its
    residual non-finite (NaN reaches it), and only then are they looked for: a ValueError names
    the argument. Callers need not check finiteness up front, a host sync per call (nor does a
    method that is approximate by design, whose certificate usually fails: ``relaxed``).
    """
    tol = options.get("tol")  # checked at the edge (check_method)
    tol = method.default_tol(z.dtype) if tol is None else float(tol)
    # The solvers run in the compute dtype: autocast would hand them mixed half/float tensors.
    with torch.autocast(device_type=z.device.type, enabled=False):
        if z.shape[0] == 0:
            # Keep the (empty) result on the autograd graph so downstream losses still backprop.
            weights = (z @ codebook.transpose(0, 1)) * 0
            return weights, weights, SolverInfo(method.name, residual=0.0, converged=True, tol=tol, objective_gap=0.0,
                                       error_bound=0.0, quantized_error_bound=0.0)
        # Small batches, and any batch on a busy machine, run on one thread: see threads.py. A
        # module's forward has decided already (``decide_threads=False``), for the ops around the
        # solve and its backward too: the machine's load is not read twice per call.
        with one_thread(decide_threads and wants_one_thread(z, codebook.shape[0])):
            try:
                out = problem.call(method, z, codebook, options)
            except Exception as err:
                _check_finite(z, codebook, name, err)
                raise
            weights, info = out if isinstance(out, tuple) else (out, SolverInfo(method.name))
            dense_weights = densify(weights) if dense else None
            cert = problem.certify(weights, dense_weights, z, codebook, info)
    worst = torch.stack([c.max() for c in cert]).tolist()  # the one host sync
    info.residual, info.objective_gap, info.error_bound, info.quantized_error_bound = worst
    info.tol = tol
    mask = cert.residual <= tol  # NaN fails
    info.converged = bool(worst[0] <= tol)
    info.extra.update(residuals=cert.residual, converged_mask=mask, error_bounds=cert.error_bound)
    if not info.converged:
        # NaN or Inf inputs fail the certificate (or the solve) first. An approximate method's
        # certificate fails as a rule: it looks only where its residual is not finite.
        if method.exact or strict or not math.isfinite(info.residual):
            _check_finite(z, codebook, name)
        _report(method, info, int(z.shape[0]), strict)
    return weights, dense_weights, info


def _check_finite(z: torch.Tensor, codebook: torch.Tensor, name: str, err: "Exception | None" = None) -> None:
    """Modules check neither their inputs nor their codebook on every forward (a host sync each
    time): where a solve failed, or its certificate did, name the likely cause, at no cost to calls
    that succeed."""
    if not bool(torch.isfinite(z.detach()).all()):
        raise ValueError(f"{name} contains NaN or Inf values") from err
    if not bool(torch.isfinite(codebook.detach()).all()):
        raise ValueError("codebook contains NaN or Inf values (check the training step that wrote it)") from err


def _report(method: Method, info: SolverInfo, n: int, strict: bool) -> None:
    if not (strict or method.exact):  # an approximate method's miss is expected: nothing to say, no sync
        return
    failed = int((~info.extra["converged_mask"]).sum())
    message = (f"scq {method.name}: {failed} of {n} vectors did not reach tol={info.tol:g} (largest relative KKT "
               f"residual {info.residual:.2e}, ‖p − p*‖ ≤ {info.error_bound:.2e})")
    hint = info.extra.get("hint")
    hint = hint() if callable(hint) else hint
    if hint:
        message += f"; {hint}"
    if strict:
        raise RuntimeError(message)
    if method.exact:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
