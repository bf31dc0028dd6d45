"""What every quantizer module shares: the output tuple, the codebook, input handling, and the
training features (k-means init, dead-code replacement, heads, cosine similarity, DDP sync;
docs/math.md §8).

A subclass implements one method, ``_quantize(vectors (n, d), codebook (K, d), head)``, for one
codebook; the base class reshapes the input around it (channels, heads), keeps the codebook
healthy before it is used, and tracks usage after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as v
from .. import distributed as dist_utils
from ..kmeans import kmeans, sample_rows
from ..solvers.solution import SparseWeights, densify, reshape_weights, stack_weights, to_sparse
from ..solvers.threads import BackwardScope, wants_one_thread
from .init import INITS, check_init, init_codebook_

__all__ = ["QuantizerOutput", "Quantizer", "commitment_loss", "INITS", "init_codebook_"]

RETURN_WEIGHTS = ("dense", "sparse", "none")

# The autograd graph task running on this thread, -1 outside any backward pass (what
# torch.utils.checkpoint itself reads). Private to torch: where a release drops it, every forward
# counts as outside a backward, as before the recomputation was told apart.
_graph_task_id = getattr(torch._C, "_current_graph_task_id", lambda: -1)


class QuantizerOutput(NamedTuple):
    """``quantized, weights, indices, loss = quantizer(x)``.

    Attributes:
        quantized: ``(..., dim)``, the quantized inputs, in the input dtype (the input's layout
            when ``channel_dim`` is set).
        weights: ``(..., K)``, the weight of each code (one-hot for VQ, on the simplex for SCQ,
            regression weights for SVQ); ``(..., heads, K)`` with several heads. With
            ``return_weights="sparse"`` a :class:`~scq.SparseWeights` (``indices`` and ``values``
            ``(..., [heads,] m)`` on the support; ``.to_dense()`` gives the dense form); with
            ``"none"``, ``None``.
        indices: ``(...)`` int64, the code with the largest weight (the hard code);
            ``(..., heads)`` with several heads.
        loss: scalar tensor, the auxiliary loss to add to the training objective (0 if none).
    """

    quantized: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


# The keyword options of Quantizer after its positional ones: the training features. Modules with
# solver options of their own (SCQ, SVQ) split their **kwargs with split_features.
FEATURES = ("learnable_codebook", "heads", "separate_codebook_per_head", "use_cosine_sim", "kmeans_init",
            "kmeans_iters", "dead_code_threshold", "decay", "channel_dim", "sync_distributed", "return_weights")


def split_features(kwargs: dict) -> "tuple[dict, dict]":
    """(the training features among ``kwargs``, everything else: the solver's options)."""
    features = {k: v for k, v in kwargs.items() if k in FEATURES}
    return features, {k: v for k, v in kwargs.items() if k not in FEATURES}


class SolverOptions(MutableMapping):
    """A module's solver options (``SCQ(..., tol=1e-6).solver_options``): a dict whose every change
    is checked as the constructor checked the options, before it is made: ``options["tol"] = -1``
    raises and leaves them as they were, instead of failing (or being clamped) at a later forward.
    ``check(options)``: the owner's check of a whole new set of options (unknown names, values)."""

    def __init__(self, options: Mapping[str, Any], check: Callable[[dict], None]):
        self._options = dict(options)
        self._check = check

    def _replace(self, options: dict) -> None:
        self._check(options)
        self._options = options

    def __getitem__(self, name: str) -> Any:
        return self._options[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._replace({**self._options, name: value})

    def __delitem__(self, name: str) -> None:
        if name not in self._options:
            raise KeyError(name)
        self._replace({k: val for k, val in self._options.items() if k != name})

    def update(self, *args, **kwargs) -> None:  # one check for the whole change, not one per item
        self._replace({**self._options, **dict(*args, **kwargs)})

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __repr__(self) -> str:
        return repr(self._options)


class HasSolverOptions:
    """Mixin of the modules whose solve takes options (SCQ, SVQ): ``solver_options`` as a
    :class:`SolverOptions`, each change checked by the module's ``_check_options(options)``."""

    def _check_options(self, options: dict) -> None:
        raise NotImplementedError

    @property
    def solver_options(self) -> SolverOptions:
        """The options the solver is called with (``tol``, ``max_rounds``, ...); a change, to an
        item or the whole, is checked against the method before it is made."""
        return self._solver_options

    @solver_options.setter
    def solver_options(self, options: "Mapping[str, Any]") -> None:
        self._check_options(dict(options))
        self._solver_options = SolverOptions(options, self._check_options)


class _Quantized(NamedTuple):
    # One codebook's result, inside the module: rows (n, d), weights (n, K) or SparseWeights
    # (n, m), indices (n,).
    quantized: torch.Tensor
    weights: "torch.Tensor | SparseWeights"
    indices: torch.Tensor
    loss: torch.Tensor


def _check_loaded_codebook(module: "Quantizer", incompatible_keys) -> None:
    # A named function, not a lambda: modules must stay picklable (torch.save(model)).
    module.check_codebook()
    module._initted_seen = False  # the loaded ``initted`` buffer decides again


class Quantizer(nn.Module):
    """Base class: a learnable (or frozen) codebook and the training features every quantizer has.

    Args:
        dim: input dimension D (inputs are ``(..., dim)``).
        codebook_size: number of codes K.
        init: codebook initialization (see :func:`scq.quantizers.init.init_codebook_`).
        learnable_codebook: the codebook is a trained parameter (else frozen).
        heads: split each input into ``heads`` vectors of ``dim // heads`` features, quantized
            separately; outputs gain a ``heads`` axis before K.
        separate_codebook_per_head: one codebook per head (``codebook`` is ``(heads, K, d)``);
            default: the heads share one ``(K, d)`` codebook.
        use_cosine_sim: quantize l2-normalized inputs with l2-normalized codes.
        kmeans_init: on the first training forward, set the codes to k-means centres of that
            batch (``kmeans_iters`` Lloyd iterations); ``initted`` is a buffer, so a loaded
            checkpoint is not re-initialized.
        kmeans_iters: Lloyd iterations of ``kmeans_init``.
        dead_code_threshold: on each training forward, codes whose running usage (an EMA of the
            number of vectors they win, or of their weight mass for soft quantizers, buffer
            ``cluster_size``) is below this are re-seeded from the batch's vectors. 0: off.
        decay: the EMA decay of the running usage (and of VQ's EMA codebook).
        channel_dim: the axis of ``x`` that holds the ``dim`` features, e.g. 1 for ``(B, C, H, W)``
            feature maps; ``quantized`` keeps that layout, ``weights``/``indices`` put the batch
            axes first. Default: the last axis.
        sync_distributed: under ``torch.distributed``, compute k-means, re-seeding, usage and EMA
            statistics over all processes so that codebooks stay identical (default: whenever a
            process group of more than one process is running).
        return_weights: ``"dense"`` (default) ``(..., K)`` weights; ``"sparse"``
            :class:`~scq.SparseWeights` on the support (O(N·m) instead of O(N·K) memory: no
            dense copy is kept on the graph); ``"none"``: no weights (``quantized``, ``indices``
            and ``loss`` only).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        init: str = "normal",
        learnable_codebook: bool = True,
        heads: int = 1,
        separate_codebook_per_head: bool = False,
        use_cosine_sim: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        decay: float = 0.8,
        channel_dim: Optional[int] = None,
        sync_distributed: Optional[bool] = None,
        return_weights: str = "dense",
    ):
        super().__init__()
        self.dim = v.check_positive_int("dim", dim)
        self.codebook_size = v.check_positive_int("codebook_size", codebook_size)
        self.init = check_init(init)
        self.heads = v.check_positive_int("heads", heads)
        if dim % self.heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.codebook_dim = dim // self.heads
        self.separate_codebook_per_head = bool(separate_codebook_per_head) and self.heads > 1
        self.use_cosine_sim = bool(use_cosine_sim)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = v.check_positive_int("kmeans_iters", kmeans_iters)
        self.dead_code_threshold = v.check_nonnegative("dead_code_threshold", dead_code_threshold)
        self.decay = v.check_unit_interval("decay", decay)
        if channel_dim is not None and (isinstance(channel_dim, bool) or not isinstance(channel_dim, int)):
            raise TypeError(f"channel_dim must be an int or None, got {type(channel_dim).__name__}")
        self.channel_dim = channel_dim
        self.sync_distributed = sync_distributed
        if return_weights not in RETURN_WEIGHTS:
            raise ValueError(f"return_weights must be one of {RETURN_WEIGHTS}, got {return_weights!r}")
        self.return_weights = return_weights

        shape = (self.num_codebooks, codebook_size, self.codebook_dim)
        self.codebook = nn.Parameter(torch.empty(shape[1:] if self.num_codebooks == 1 else shape),
                                     requires_grad=learnable_codebook)
        self.register_buffer("initted", torch.tensor(not self.kmeans_init))
        self._initted_seen = False
        if self.dead_code_threshold > 0:
            # Every code starts at the threshold, as a revived code does: one step of grace
            # before its usage is judged, rather than every code "dead" at the first forward.
            self.register_buffer("cluster_size", torch.full((self.num_codebooks, codebook_size), self.dead_code_threshold))
        else:
            self.cluster_size = None
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_check_loaded_codebook)

    @property
    def num_codebooks(self) -> int:
        return self.heads if self.separate_codebook_per_head else 1

    def reset_parameters(self) -> None:
        init_codebook_(self.codebook, self.init)

    # -- the codebook, as (num_codebooks, K, d) whatever the parameter's shape --------------------

    def _books(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.num_codebooks, self.codebook_size, self.codebook_dim)

    def _codebook(self, dtype: torch.dtype) -> torch.Tensor:
        """The codes as the solvers see them, ``(num_codebooks, K, d)``: in the compute dtype,
        l2-normalized with ``use_cosine_sim`` (differentiably)."""
        books = self._books(self.codebook).to(dtype)
        return F.normalize(books, dim=-1) if self.use_cosine_sim else books

    def _sync(self) -> bool:
        return dist_utils.resolve_sync(self.sync_distributed)

    # -- initialization from data ------------------------------------------------------------------

    @torch.no_grad()
    def init_codebook_from_data(
        self, x: torch.Tensor, generator: Optional[torch.Generator] = None, *, kmeans_iters: int = 0
    ) -> None:
        """Set the codes from input vectors ``x`` (``(..., dim)``, or the ``channel_dim`` layout).

        ``kmeans_iters=0``: randomly chosen vectors (with replacement if fewer than K);
        otherwise k-means centres after that many Lloyd iterations. Under ``torch.distributed``
        (see ``sync_distributed``) the vectors of every rank are pooled and every rank gets the
        same codes; every rank must call it.
        """
        if not self._seed_codes(self._vectors(self._flatten(x)[0].detach()), kmeans_iters, generator):
            raise ValueError("x holds no vectors to initialize the codebook from")

    def _seed_codes(self, vecs: torch.Tensor, kmeans_iters: int, generator: Optional[torch.Generator] = None) -> bool:
        """Every code from ``vecs`` (N, heads, d): k-means centres (``kmeans_iters`` > 0) or
        sampled vectors, pooled over the ranks; False (nothing done) if no rank has a vector."""
        sync = self._sync()
        if int(dist_utils.all_reduce_sum(torch.tensor(vecs.shape[0], device=vecs.device), sync)) == 0:
            return False
        everything = torch.ones(self.codebook_size, dtype=torch.bool, device=vecs.device)
        for book, rows in enumerate(self._per_codebook(vecs)):
            if kmeans_iters > 0:  # kmeans pools, runs on rank 0 and broadcasts centres and counts
                centres, counts = kmeans(rows, self.codebook_size, kmeans_iters, cosine=self.use_cosine_sim,
                                         generator=generator, sync_distributed=sync)
            else:
                centres, counts = sample_rows(dist_utils.gather_rows(rows, sync), self.codebook_size, generator), None
                dist_utils.broadcast_(centres, sync)  # rank 0's draw on every rank
            self._set_codes(book, everything, centres, counts)
        self.initted.fill_(True)
        return True

    def _set_codes(self, book: int, mask: torch.Tensor, codes: torch.Tensor, usage: Optional[torch.Tensor]) -> None:
        """Overwrite the codes of codebook ``book`` where ``mask`` (K,) is True. Through ``.data``:
        a graph from an earlier forward (gradient accumulation) keeps working, and only codes
        that no vector used recently (or every code, at initialization) change."""
        target = self._books(self.codebook.data)[book]
        target.copy_(torch.where(mask.unsqueeze(-1), codes.to(target.dtype), target))
        if self.cluster_size is not None:
            fresh = usage if usage is not None else torch.full_like(self.cluster_size[book], self.dead_code_threshold)
            self.cluster_size[book] = torch.where(mask, fresh.to(self.cluster_size.dtype), self.cluster_size[book])
        self._codes_replaced(book, mask, codes.to(target.dtype), usage)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before k-means init (scq 0.1) have no ``initted``: their codebooks
        # were trained, so they count as initialized.
        state_dict.setdefault(prefix + "initted", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _codes_replaced(self, book: int, mask: torch.Tensor, codes: torch.Tensor, usage: Optional[torch.Tensor]) -> None:
        """Hook for subclasses with statistics tied to the codes (VQ's EMA)."""

    # -- the forward --------------------------------------------------------------------------------

    def _flatten(self, x: torch.Tensor) -> "tuple[torch.Tensor, torch.Size]":
        """Checked ``(N, dim)`` view of ``x`` in the compute dtype, and the batch shape: the one
        validation of a forward (the module's own parameters were checked when set)."""
        v.check_tensor("x", x)
        if self.channel_dim is not None:
            if not -x.dim() <= self.channel_dim < x.dim():
                raise ValueError(f"channel_dim={self.channel_dim} is out of range for x of shape {tuple(x.shape)}")
            x = x.movedim(self.channel_dim, -1)
        if x.dim() < 1 or x.shape[-1] != self.dim:
            if self.channel_dim is None:
                raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
            raise ValueError(f"x must have {self.dim} features on axis channel_dim={self.channel_dim}, "
                             f"got shape {tuple(x.movedim(-1, self.channel_dim).shape)}")
        if x.device != self.codebook.device:
            raise ValueError(f"x is on {x.device} but the codebook is on {self.codebook.device}")
        if not self._certified_forward or (self._updates_state() and self._writes_codes_from_inputs()):
            v.check_finite("x", x)  # else the certificate finds NaN, and the solve names x (dispatch.solve)
        dtype = v.compute_dtype(x, self.codebook)
        return x.reshape(-1, self.dim).to(dtype), x.shape[:-1]

    # True where every forward's answer is certified by dispatch.solve, which looks for non-finite
    # inputs when a certificate fails: the forward then spends no host sync on checking x up front.
    _certified_forward: bool = False

    def _updates_state(self) -> bool:
        """Does this forward update the codebook's state (initialization, dead codes, usage EMA, VQ's
        EMA codebook)? In training, except where the forward runs inside a backward pass: that is
        torch.utils.checkpoint recomputing it, which must give the first forward's graph (it raised
        CheckpointError once the codebook had changed under it) and must not count the batch twice."""
        return self.training and _graph_task_id() == -1

    def _writes_codes_from_inputs(self) -> bool:
        """Will this training forward write codes from the batch (initialization, dead codes)? Then
        x is checked before, so that NaN never reaches the codebook."""
        return not self._initted_seen or self.cluster_size is not None

    def _vectors(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, dim) → (N, heads, d), l2-normalized with ``use_cosine_sim``."""
        vecs = flat.reshape(flat.shape[0], self.heads, self.codebook_dim)
        return F.normalize(vecs, dim=-1) if self.use_cosine_sim else vecs

    def _per_codebook(self, vecs: torch.Tensor) -> "list[torch.Tensor]":
        """The rows each codebook quantizes: one (N·heads, d) block when shared, else per head."""
        if self.num_codebooks == 1:
            return [vecs.reshape(-1, self.codebook_dim)]
        return [vecs[:, h] for h in range(self.heads)]

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        flat, batch_shape = self._flatten(x)
        vecs = self._vectors(flat)
        if self._updates_state():
            self._maintain_codebook(vecs.detach())
        books = self._codebook(flat.dtype)
        # Solves of small batches, or on a busy machine, run on one thread, forward and backward
        # alike, with the ops around them (see scq/solvers/threads.py); so does the work of a
        # module without a solve (VQ) on a busy machine: beside two torch jobs on 2 cores, VQ at
        # N = 4096, K = 1024 took 19× its idle time on the pool.
        scope = BackwardScope(wants_one_thread(flat, self.codebook_size, small_batches=self._certified_forward))
        with scope.forward():
            vecs, books = scope.inputs(vecs, books)
            parts = [self._quantize(rows, books[b], b) for b, rows in enumerate(self._per_codebook(vecs))]
            if self._updates_state() and self.cluster_size is not None:
                self._track_usage(parts)
            out = self._assemble(parts, flat.shape[0], batch_shape, x)
            quantized, loss = scope.outputs(out.quantized, out.loss)
        return out._replace(quantized=quantized, loss=loss)

    def _quantize(self, vectors: torch.Tensor, codebook: torch.Tensor, book: int) -> _Quantized:
        raise NotImplementedError

    # -- from codes back to vectors (what a receiver of the codes computes) ------------------------

    def decode(self, weights: "torch.Tensor | SparseWeights") -> torch.Tensor:
        """The vectors Σ_k w_k e_k that ``weights`` stand for: ``(..., K)`` (``(..., heads, K)``
        with several heads) dense or :class:`~scq.SparseWeights` → ``(..., dim)`` (the
        ``channel_dim`` layout when set), in the codebook's current state.

        ``decode(quantizer(x).weights)`` equals ``quantized`` (up to rounding); weights changed
        after the forward (e.g. rounded to a few bits, to measure a rate) give the vectors a
        decoder would see. For VQ's one-hot weights it is the nearest codes, as
        :meth:`get_output_from_indices`.
        """
        dense = densify(weights)
        if not torch.is_tensor(dense) or dense.dim() < 1 or dense.shape[-1] != self.codebook_size:
            raise ValueError(f"weights must have shape (..., {self.codebook_size}), got "
                             f"{tuple(dense.shape) if torch.is_tensor(dense) else type(weights).__name__}")
        books = self._codebook(dense.dtype if dense.is_floating_point() else self.codebook.dtype)
        dense = dense.to(books.dtype)
        if self.heads == 1:
            vectors = dense @ books[0]
        else:
            if dense.dim() < 2 or dense.shape[-2] != self.heads:
                raise ValueError(f"weights must have shape (..., heads={self.heads}, {self.codebook_size}), "
                                 f"got {tuple(dense.shape)}")
            vectors = dense @ books[0] if self.num_codebooks == 1 else torch.einsum("...hk,hkd->...hd", dense, books)
            vectors = vectors.reshape(*dense.shape[:-2], self.dim)
        return vectors if self.channel_dim is None else vectors.movedim(-1, self.channel_dim)

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """The codes of hard ``indices`` ``(...)`` (``(..., heads)`` with several heads) as
        vectors ``(..., dim)`` (the ``channel_dim`` layout when set): vector-quantize-pytorch's
        name for it."""
        if not torch.is_tensor(indices) or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"indices must be an integer tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.decode(F.one_hot(indices, self.codebook_size).to(self.codebook.dtype))

    def _assemble(self, parts: "list[_Quantized]", n: int, batch_shape: torch.Size, x: torch.Tensor) -> QuantizerOutput:
        h = self.heads
        weights = [self._output_weights(p.weights, x.dtype) for p in parts]
        if len(parts) == 1:
            quantized, indices, loss, weights = parts[0].quantized, parts[0].indices, parts[0].loss, weights[0]
        else:
            quantized = torch.stack([p.quantized for p in parts], 1)
            indices = torch.stack([p.indices for p in parts], 1)
            loss = torch.stack([p.loss for p in parts]).mean()
            weights = stack_weights(weights, 1)
        head_axis = (h,) if h > 1 else ()
        quantized = quantized.to(x.dtype).reshape(*batch_shape, self.dim)
        if self.channel_dim is not None:
            quantized = quantized.movedim(-1, self.channel_dim)
        if self.heads > 1 and self.num_codebooks == 1 and weights is not None:
            weights = reshape_weights(weights, (n, h))  # shared codebook: rows were (n·h)
        return QuantizerOutput(quantized, reshape_weights(weights, (*batch_shape, *head_axis)),
                               indices.reshape((*batch_shape, *head_axis)), loss)  # (a tuple: () for one vector)

    def _output_weights(self, weights, dtype: torch.dtype):
        """One codebook's weights in the form ``return_weights`` asks for, in the input dtype."""
        if self.return_weights == "none":
            return None
        if self.return_weights == "sparse":
            sparse = to_sparse(weights)
            return SparseWeights(sparse.indices, sparse.values.to(dtype), sparse.num_codes)
        return densify(weights).to(dtype)

    # -- codebook upkeep: k-means init, dead codes, usage --------------------------------------------

    @torch.no_grad()
    def _maintain_codebook(self, vecs: torch.Tensor) -> None:
        # Before the codes are used in this forward, so the graph never sees them change.
        if not self._initted_seen:  # a Python flag: the buffer is read (a host sync) until set
            if not bool(self.initted):  # an empty batch on every rank: try again next forward
                self._seed_codes(vecs, self.kmeans_iters)
            self._initted_seen = bool(self.initted)
        if self.cluster_size is not None:
            self._revive_dead_codes(vecs)

    def _revive_dead_codes(self, vecs: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold  # identical on every rank (all-reduced)
        if not bool(dead.any()):  # the one host sync of the upkeep
            return
        sync = self._sync()
        for book, rows in enumerate(self._per_codebook(vecs)):
            if not bool(dead[book].any()):
                continue
            # Each rank offers at most K of its vectors; rank 0 draws the new codes from the pool.
            pool = dist_utils.gather_rows(sample_rows(rows, self.codebook_size) if rows.shape[0] > self.codebook_size
                                          else rows, sync)
            if pool.shape[0] == 0:
                continue
            codes = sample_rows(pool, self.codebook_size) if dist_utils.is_rank_zero() else pool.new_zeros(
                self.codebook_size, pool.shape[1])
            dist_utils.broadcast_(codes, sync)
            self._set_codes(book, dead[book], codes, None)

    def _usage_mass(self, part: _Quantized) -> torch.Tensor:
        """(K,) how much each code was used by one codebook's batch: the weights' |mass|, each
        vector counting 1 (one-hot for VQ, the simplex weights for SCQ, |w|/‖w‖₁ for SVQ)."""
        sparse = isinstance(part.weights, SparseWeights)
        w = (part.weights.values if sparse else part.weights).detach().abs()
        share = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        if sparse:
            return w.new_zeros(self.codebook_size).index_add_(0, part.weights.indices.reshape(-1), share.reshape(-1))
        return share.sum(0)

    @torch.no_grad()
    def _track_usage(self, parts: "list[_Quantized]") -> None:
        mass = torch.stack([self._usage_mass(p).to(self.cluster_size.dtype) for p in parts])
        mass = dist_utils.all_reduce_sum(mass, self._sync())
        self.cluster_size.mul_(self.decay).add_(mass, alpha=1 - self.decay)

    # -- checks and repr -----------------------------------------------------------------------------

    def check_codebook(self) -> None:
        """Raise a ValueError if the codebook holds NaN or Inf (one host sync). Runs after
        ``load_state_dict``; call it yourself after editing the codebook by hand. Forwards do not
        check it up front: a solver that fails on a non-finite codebook is reported as this same
        ValueError, and one that returns an answer has it judged by the certificate, which NaN
        never passes (``last_info.converged`` False)."""
        v.check_finite("codebook", self.codebook.detach())

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, codebook_size={self.codebook_size}, init={self.init!r}"
        if self.heads > 1:
            s += f", heads={self.heads}, separate_codebook_per_head={self.separate_codebook_per_head}"
        for name in ("use_cosine_sim", "kmeans_init"):
            if getattr(self, name):
                s += f", {name}=True"
        if self.dead_code_threshold > 0:
            s += f", dead_code_threshold={self.dead_code_threshold}"
        if self.channel_dim is not None:
            s += f", channel_dim={self.channel_dim}"
        if self.return_weights != "dense":
            s += f", return_weights={self.return_weights!r}"
        return s


def commitment_loss(x: torch.Tensor, quantized: torch.Tensor, beta: float) -> torch.Tensor:
    """‖sg(x) − q‖² + β‖x − sg(q)‖² (means): pulls the codes to the inputs and commits the inputs."""
    if x.shape[0] == 0:
        return x.sum() * 0
    codebook_term = torch.mean((quantized - x.detach()) ** 2)
    commit_term = torch.mean((x - quantized.detach()) ** 2)
    return codebook_term + beta * commit_term
