"""Codebook usage on real images: one autoencoder, every quantizer, a fixed training budget.

For each data set (photo patches, digits), quantizer and seed: train the same autoencoder for a
fixed number of Adam steps, then report held-out reconstruction MSE, perplexity, usage, dead
codes and support size over the whole held-out set, and the mean time per training step.
Two kinds of baselines:

- plain (``vq``, ``scq-*``): codebooks set once from the first batch's latent vectors;
- strong (``*-strong``): k-means init on the first batch and dead-code replacement
  (``dead_code_threshold`` = ``DEAD_CODE_THRESHOLD`` vectors of running usage), with an EMA
  codebook for VQ; vector-quantize-pytorch (``vqp-strong``) is configured the same way
  (``kmeans_init``, ``threshold_ema_dead_code``, EMA with the same decay, β = 0.25), with its
  other options at their defaults.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import scq

from . import data
from .autoencoder import AutoEncoder
from .common import machine_info, train_step


@dataclass(frozen=True)
class Setting:
    dataset: str
    steps: int
    batch: int
    seeds: tuple
    dim: int
    codebook_size: int
    svq_codebook_size: int
    n_train: int
    n_test: int


def settings(quick: bool) -> list[Setting]:
    if quick:
        return [Setting("photos", 30, 16, (0,), 8, 32, 256, 512, 128),
                Setting("digits", 30, 32, (0,), 8, 32, 256, 0, 0)]
    return [Setting("photos", 400, 32, (0, 1, 2), 16, 128, 1024, 8192, 2048),
            Setting("digits", 400, 64, (0, 1, 2), 16, 64, 1024, 0, 0)]


QUANTIZERS = ("none", "vq", "vq-strong", "vqp-strong", "scq-relaxed", "scq-relaxed-strong", "scq-pgd",
              "scq-pgd-strong", "svq-mlp")
DEAD_CODE_THRESHOLD = 1.0
DECAY = 0.8
STRONG = dict(kmeans_init=True, kmeans_iters=10, dead_code_threshold=DEAD_CODE_THRESHOLD, decay=DECAY)


class VQPAdapter(torch.nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` (or ``ResidualVQ`` with ``stages`` > 1),
    configured as the strong baselines (``kmeans_init``, ``threshold_ema_dead_code``, EMA with the
    same decay, β = 0.25; other options at their defaults), behind scq's interface: ``(..., D)`` in,
    :class:`scq.QuantizerOutput` out (one-hot weights ``(..., [stages,] K)``)."""

    def __init__(self, dim: int, codebook_size: int, stages: int = 1):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ, VectorQuantize

        opts = dict(codebook_size=codebook_size, kmeans_init=True, kmeans_iters=10,
                    threshold_ema_dead_code=DEAD_CODE_THRESHOLD, decay=DECAY, commitment_weight=0.25)
        self.vq = ResidualVQ(dim=dim, num_quantizers=stages, **opts) if stages > 1 else VectorQuantize(dim=dim, **opts)
        self.codebook_size, self.stages = codebook_size, stages
        self.rate_bits = stages * math.log2(codebook_size)  # indices only: log2 K bits per stage

    def forward(self, z: torch.Tensor) -> scq.QuantizerOutput:
        flat = z.reshape(1, -1, z.shape[-1])
        quantized, indices, loss = self.vq(flat)
        indices = indices.reshape(z.shape[:-1] + ((self.stages,) if self.stages > 1 else ()))
        weights = torch.nn.functional.one_hot(indices, self.codebook_size).to(z.dtype)
        return scq.QuantizerOutput(quantized.reshape(z.shape), weights, indices, loss.sum())


def make_quantizer(name: str, s: Setting):
    if name == "none":
        return None
    if name == "vq":
        return scq.VQ(s.dim, s.codebook_size)
    if name == "vq-strong":
        return scq.VQ(s.dim, s.codebook_size, ema_update=True, **STRONG)
    if name == "vqp-strong":
        return VQPAdapter(s.dim, s.codebook_size)
    if name.startswith("scq-"):
        method = name[4:].removesuffix("-strong")
        return scq.SCQ(s.dim, s.codebook_size, lam=0.1, method=method, **(STRONG if name.endswith("-strong") else {}))
    if name == "svq-mlp":
        return scq.SVQ(s.dim, s.svq_codebook_size)
    raise ValueError(name)


def load(s: Setting, seed: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """(train, held-out) images of a setting's data set."""
    if s.dataset == "photos":
        return (data.photo_patches(s.n_train, data.TRAIN_PHOTOS, seed=seed),
                data.photo_patches(s.n_test, data.TEST_PHOTOS, seed=seed + 1000))
    return data.digits(seed=seed)


def train_one(name: str, s: Setting, seed: int, train: torch.Tensor, test: torch.Tensor, return_model: bool = False):
    """Train one autoencoder; returns (row, curve), plus the trained model if ``return_model``."""
    torch.manual_seed(seed)
    model = AutoEncoder(train.shape[1], s.dim, make_quantizer(name, s))
    gen = torch.Generator().manual_seed(seed)
    first = train[torch.randint(train.shape[0], (s.batch,), generator=gen)]
    if isinstance(model.quantizer, (scq.VQ, scq.SCQ)) and not name.endswith("-strong"):
        with torch.no_grad():
            model.quantizer.init_codebook_from_data(model.encode(first), generator=gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    curve, times = [], []
    for step in range(s.steps):
        x = train[torch.randint(train.shape[0], (s.batch,), generator=gen)]
        start = time.perf_counter()
        curve.append(train_step(model, x, x, opt))
        times.append(time.perf_counter() - start)
    model.eval()
    usage = scq.CodebookUsage(model.quantizer.codebook_size) if model.quantizer is not None else None
    sq_err, count = 0.0, 0
    with torch.no_grad():
        for chunk in test.split(256):
            recon, out = model(chunk)
            sq_err += float(((recon - chunk) ** 2).sum())
            count += chunk.numel()
            if usage is not None:
                usage.update(out.weights)
    row = dict(test_mse=sq_err / count, step_s=statistics.median(times[1:] or times), train_mse_end=statistics.mean(curve[-10:]))
    if usage is not None:
        u = usage.compute()
        row.update(perplexity=u["perplexity"], normalized_perplexity=u["normalized_perplexity"],
                   usage_pct=100 * u["usage"], dead_codes=u["dead_codes"], support_size=u["support_size"],
                   codebook_size=model.quantizer.codebook_size)
    return (row, curve, model) if return_model else (row, curve)


def run(quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True) -> "tuple[list[dict], dict]":
    """Rows (one per data set × quantizer × seed) and the training curves {(dataset, quantizer): [curves]}."""
    meta = machine_info("cpu", torch.float32)
    rows, curves = [], {}
    jobs = [(s, q, sd) for s in settings(quick) for sd in s.seeds for q in QUANTIZERS]
    cache = {}
    bar = tqdm(jobs, desc="usage", disable=not progress)
    for s, name, sd in bar:
        bar.set_postfix_str(f"{s.dataset} {name} seed={sd}")
        key = (s.dataset, sd + seed)
        if key not in cache:
            cache[key] = load(s, sd + seed)
        train, test = cache[key]
        row, curve = train_one(name, s, sd + seed, train, test)
        rows.append(dict(meta, part="usage", dataset=s.dataset, quantizer=name, seed=sd + seed, steps=s.steps,
                         batch=s.batch, dim=s.dim, **row))
        curves.setdefault((s.dataset, name), []).append(curve)
    return rows, curves


def summary(rows: list[dict]) -> list[dict]:
    """Mean ± spread over seeds per (data set, quantizer)."""
    keys = ("test_mse", "perplexity", "usage_pct", "dead_codes", "support_size", "step_s")
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for q in QUANTIZERS:
            group = [r for r in rows if r["dataset"] == ds and r["quantizer"] == q]
            if not group:
                continue
            s = dict(dataset=ds, quantizer=q, seeds=len(group), codebook_size=group[0].get("codebook_size", ""))
            for k in keys:
                vals = [r[k] for r in group if k in r]
                if vals:
                    mean = statistics.mean(vals)
                    spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    s[k] = f"{mean:.4g} ± {spread:.2g}" if len(vals) > 1 else float(mean)
            out.append(s)
    return out
