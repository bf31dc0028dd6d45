"""Argument checks shared by every solver and module.

Each check raises early with the argument's name and what was expected, so a bad call never
reaches a solver and never comes back as a silent NaN.
"""

from __future__ import annotations

import numbers

import torch
from torch._C import _functorch

# Dtypes too narrow for the solvers' arithmetic: computed in float32, returned in the input dtype.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def transformed(*tensors: "torch.Tensor | None") -> bool:
    """Whether a tensor is a torch.func transform's wrapper (``grad``, ``vjp``, ``jacrev``): it has
    no storage for a compiled kernel (or cvxpylayers) to read."""
    return any(t is not None and _functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if _functorch.is_batchedtensor(x):
        # (torch.func.grad, vjp and jacrev work: only vmap's per-sample view of a batch cannot)
        raise RuntimeError(
            f"{name} comes from torch.vmap, which scq's solvers do not support: each solve decides on its data "
            f"(rounds, supports, convergence). Pass the batch as leading dimensions instead, (..., D): the "
            f"solvers are batched already")
    return x


def check_finite(name: str, x: torch.Tensor) -> None:
    # One reduction and one host sync per call: cheap next to any solve. On x detached: isfinite
    # is abs() underneath, which would record a node (and save x) in x's graph, an extra saved
    # tensor that made torch.utils.checkpoint's recomputation disagree with the first forward.
    if x.numel() and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def check_codebook(codebook: object) -> torch.Tensor:
    codebook = check_tensor("codebook", codebook)
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be 2-D (K, D), got shape {tuple(codebook.shape)}")
    if codebook.shape[0] < 1 or codebook.shape[1] < 1:
        raise ValueError(f"codebook must have at least one code and one dimension, got {tuple(codebook.shape)}")
    check_finite("codebook", codebook)
    return codebook


def check_inputs(z: object, codebook: torch.Tensor, name: str = "z") -> torch.Tensor:
    z = check_tensor(name, z)
    if z.dim() < 1:
        raise ValueError(f"{name} must have shape (..., D), got a scalar")
    if z.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"{name} has last dimension {z.shape[-1]} but the codebook has dimension D={codebook.shape[1]}"
        )
    if z.device != codebook.device:
        raise ValueError(f"{name} is on {z.device} but the codebook is on {codebook.device}")
    check_finite(name, z)
    return z


def check_target(target: object, batch_shape: torch.Size, K: int, ref: torch.Tensor) -> torch.Tensor:
    target = check_tensor("target", target)
    expected = tuple(batch_shape) + (K,)
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} (the inputs' batch shape, then K), got {tuple(target.shape)}")
    if target.device != ref.device:
        raise ValueError(f"target is on {target.device} but z is on {ref.device}")
    check_finite("target", target)
    return target


def check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (value > 0.0) or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (value >= 0.0) or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_unit_interval(name: str, value: object) -> float:
    """A decay: a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_positive_int(name: str, value: object) -> int:
    return check_int_at_least(name, value, 1)


def check_choice(name: str, value: object, choices: tuple) -> object:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the solvers work in: the promoted input dtype, float32 for half types."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in LOW_PRECISION else dtype
