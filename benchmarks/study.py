r"""The study: do the papers' claims hold? Rate–distortion, usage and forecasting, measured fairly.

Two tasks, every contender trained from scratch on each, over several seeds:

- **Images** (``patches16``, and ``patches32`` on fewer contenders): square RGB patches of every
  image bundled with scikit-image and scikit-learn, training and held-out patches from
  *different* images (``data.BUNDLED_TRAIN``, ``data.BUNDLED_HELDOUT``); the convolutional
  autoencoder of the usage benchmark with the quantizer on its latent vectors (16 features per
  latent pixel, one per 4×4 pixels). Measured on the held-out images: MSE and PSNR, the rate in
  bits per latent vector with soft weights rounded to b ∈ {4, 8} bits and the MSE re-measured
  after the rounding (``rate.py``), usage by argmax and by weight mass, time per training step.
- **Forecasting** (SVQ's claim): digits moving on a 32×32 canvas (``data.moving_digits``, digits
  of the held-out sequences never seen in training), 4 frames in, the next 4 out, a small SimVP
  (``simvp.py``) with and without a quantizer where SVQ's code puts it. Measured: next-frames MSE
  and MAE on held-out sequences.

Every baseline is strong: k-means init on the first batch and dead-code replacement (and an EMA
codebook for VQ), vector-quantize-pytorch configured the same way. SVQ is run as its paper and
released code do (no k-means; frozen N(0, 1) or learned Kaiming codebook).

Training: Adam (lr 2e-3) with a cosine decay to a tenth, the same for everyone; the held-out MSE
is measured ``EVALS`` times during training, and how much it still moved over the last fifth of
the schedule is reported (``heldout_change_last_fifth``) to show whether the curves flattened.

Runs are spread over ``workers`` processes of one thread each (the 2-core default: two runs at
once); times per step are therefore one-thread times beside one other run.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Optional

import torch
from tqdm.auto import tqdm

import scq

from . import data, rate
from .autoencoder import AutoEncoder
from .common import machine_info, train_step
from .simvp import SimVP
from .usage import STRONG, VQPAdapter

K = 64  # the codebook of SCQ, residual stacks and the VQ line's middle
VQ_SIZES = (16, 64, 256, 1024)
VQP_SIZES = (64, 256)
RVQ_STAGES = (2, 4, 8)
LAMS = (0.01, 0.1, 1.0, 10.0)
SVQ_K = 1024
LASSO_K, LASSO_ALPHA = 128, 0.1
WEIGHT_BITS = (8, 4)
EVALS = 10
LR = 2e-3


def _contender_names() -> "list[str]":
    names = ["none"] + [f"vq-K{k}" for k in VQ_SIZES] + [f"vqp-K{k}" for k in VQP_SIZES]
    names += [f"rvq-{s}x{K}" for s in RVQ_STAGES] + [f"rvqp-4x{K}"]
    names += [f"scq-pgd-lam{lam:g}" for lam in LAMS] + [f"scq-relaxed-lam{lam:g}" for lam in LAMS]
    names += [f"rscq-2x{K}", "svq-mlp-frozen", "svq-mlp-learned", "svq-lasso"]
    return names


CONTENDERS = tuple(_contender_names())
SECOND_SIZE = ("none", f"vq-K{K}", "vq-K256", f"rvq-4x{K}", "scq-pgd-lam0.1", "scq-relaxed-lam0.1", "svq-mlp-frozen")
FORECASTERS = ("none", f"vq-K{K}", "scq-pgd-lam0.1", "svq-mlp-frozen", "svq-mlp-learned")


def family(name: str) -> str:
    """The line a contender belongs to in the rate–distortion plot (its sweep parameter dropped)."""
    for prefix in ("vqp-", "vq-", "rvqp-", "rvq-", "scq-pgd-", "scq-relaxed-", "rscq-"):
        if name.startswith(prefix):
            return prefix[:-1]
    return name


@dataclass(frozen=True)
class ImageSetting:
    name: str
    size: int
    steps: int
    batch: int
    seeds: tuple
    n_train: int
    n_test: int
    contenders: tuple
    dim: int = 16


@dataclass(frozen=True)
class ForecastSetting:
    name: str
    steps: int
    batch: int
    seeds: tuple
    n_train: int
    n_test: int
    contenders: tuple
    frames: int = 4
    dim: int = 16


def settings(quick: bool, scale: float = 1.0) -> "tuple[list[ImageSetting], list[ForecastSetting]]":
    """The runs of quick mode or of the full study; ``scale`` multiplies the full study's training
    steps (e.g. 4 on a GPU: every curve runs four times as long)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    if not quick and scale != 1.0:
        images, forecasts = settings(False)
        return ([replace(s, steps=round(s.steps * scale)) for s in images],
                [replace(s, steps=round(s.steps * scale)) for s in forecasts])
    if quick:
        return ([ImageSetting("patches16", 16, 16, 16, (0,), 256, 32, CONTENDERS),
                 ImageSetting("patches32", 32, 16, 8, (0,), 64, 16, ("none", f"vq-K{K}", "scq-pgd-lam0.1"))],
                [ForecastSetting("moving_digits", 16, 2, (0,), 32, 8, FORECASTERS)])
    # Sized for two CPU cores (about 20 minutes); scale steps and seeds up where there is more.
    return ([ImageSetting("patches16", 16, 800, 64, (0, 1, 2), 16384, 2048, CONTENDERS),
             ImageSetting("patches32", 32, 800, 16, (0, 1, 2), 8192, 1024, SECOND_SIZE)],
            [ForecastSetting("moving_digits", 400, 8, (0, 1, 2), 2000, 400, FORECASTERS)])


# -- quantizers ------------------------------------------------------------------------------------


def make_quantizer(name: str, dim: int) -> "Optional[torch.nn.Module]":
    """The quantizer a contender's name stands for (see ``CONTENDERS``)."""
    if name == "none":
        return None
    if name.startswith("vq-K"):
        return scq.VQ(dim, int(name[4:]), ema_update=True, **STRONG)
    if name.startswith("vqp-K"):
        return VQPAdapter(dim, int(name[5:]))
    if name.startswith("rvqp-"):
        stages, k = map(int, name[5:].split("x"))
        return VQPAdapter(dim, k, stages)
    if name.startswith("rvq-"):
        stages, k = map(int, name[4:].split("x"))
        return scq.ResidualQuantizer(dim, stages, k, quantizer="vq", ema_update=True, **STRONG)
    if name.startswith("scq-"):
        method, lam = name[4:].split("-lam")
        return scq.SCQ(dim, K, lam=float(lam), method=method, **STRONG)
    if name.startswith("rscq-"):
        stages, k = map(int, name[5:].split("x"))
        return scq.ResidualQuantizer(dim, stages, k, quantizer="scq", lam=0.1, **STRONG)
    if name == "svq-mlp-frozen":  # the paper's text: frozen N(0, 1) codebook
        return scq.SVQ(dim, SVQ_K)
    if name == "svq-mlp-learned":  # the released configurations: learned, Kaiming init
        return scq.SVQ(dim, SVQ_K, freeze_codebook=False, init="kaiming")
    if name == "svq-lasso":  # the exact problem the MLP amortizes
        return scq.SVQ(dim, LASSO_K, solver="lasso", alpha=LASSO_ALPHA, freeze_codebook=False, init="kaiming")
    raise ValueError(f"unknown contender {name!r}")


def _codebook_size(q) -> int:
    return q.layers[0].codebook_size if isinstance(q, scq.ResidualQuantizer) else q.codebook_size


# -- training ----------------------------------------------------------------------------------------

_CACHE: dict = {}


def _images(s: ImageSetting, seed: int):
    key = ("img", s.size, s.n_train, s.n_test, seed)
    if key not in _CACHE:
        _CACHE[key] = (data.photo_patches(s.n_train, data.BUNDLED_TRAIN, size=s.size, seed=seed),
                       data.photo_patches(s.n_test, data.BUNDLED_HELDOUT, size=s.size, seed=seed + 1000))
    return _CACHE[key]


def _sequences(s: ForecastSetting, seed: int):
    key = ("seq", s.n_train, s.n_test, s.frames, seed)
    if key not in _CACHE:
        train_digits, test_digits = data.digits(seed=0)  # one split: held-out digits never seen in training
        _CACHE[key] = (data.moving_digits(s.n_train, train_digits, 2 * s.frames, seed=seed),
                       data.moving_digits(s.n_test, test_digits, 2 * s.frames, seed=seed + 1000))
    return _CACHE[key]


def _optimizer(model: torch.nn.Module, steps: int):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    # Cosine decay to a tenth: the same schedule for everyone, ending where the curves are flat.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.1 + 0.45 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    return opt, sched


def _eval_points(steps: int) -> "list[int]":
    """``EVALS`` evenly spaced steps (fewer for a schedule too short for them: the smoke run)."""
    n = min(EVALS, max(2, steps // 4))
    return sorted({max(1, round(steps * (i + 1) / n)) for i in range(n)})


def _usage(q, weights: "list[torch.Tensor]") -> dict:
    """Usage over the held-out set, by argmax and by weight mass (residual stages pooled)."""
    usage = scq.CodebookUsage(_codebook_size(q))
    for w in weights:
        usage.update(w)
    u = usage.compute()
    return dict(perplexity=u["perplexity"], soft_perplexity=u["soft_perplexity"], usage_pct=100 * u["usage"],
                dead_codes=u["dead_codes"], support_size=u["support_size"])


def _rate_rows(model: AutoEncoder, q, train: torch.Tensor, test: torch.Tensor) -> dict:
    """Held-out MSE and bits per vector at every weight precision (float32, then ``WEIGHT_BITS``)."""
    if not isinstance(q, (scq.Quantizer, scq.ResidualQuantizer)):  # vector-quantize-pytorch: indices only
        return dict(bits=q.rate_bits)
    out = {}
    with torch.no_grad():
        scales = rate.weight_scales(q, model.encode(train[:256]))
        chunks = [(chunk, model.encode(chunk)) for chunk in test.split(256)]  # encoded once, for every precision
        for bits in (None,) + (() if rate.is_hard(q) else WEIGHT_BITS):
            sq_err, total_bits, vectors = 0.0, 0.0, 0
            for chunk, z in chunks:
                zq, per_vector = rate.encode_at(q, z, bits, scales)
                sq_err += float(((model.decode(zq) - chunk) ** 2).sum())
                total_bits += float(per_vector.sum())
                vectors += per_vector.numel()
            suffix = "" if bits is None else f"_b{bits}"
            out[f"bits{suffix}"] = total_bits / vectors
            if bits is not None:
                out[f"mse{suffix}"] = sq_err / test.numel()
                out[f"psnr{suffix}"] = _psnr(sq_err / test.numel())
    return out


def _psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def _evaluate(model, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> "tuple[float, float, list]":
    """Held-out (MSE, MAE, the quantizer's weights per chunk) in one pass, in eval mode."""
    model.eval()
    se, ae, weights = 0.0, 0.0, []
    with torch.no_grad():
        for x, y in zip(inputs.split(chunk), targets.split(chunk)):
            pred, out = model(x)
            se += float(((pred - y) ** 2).sum())
            ae += float((pred - y).abs().sum())
            if out is not None:
                weights.append(out.weights)
    model.train()
    return se / targets.numel(), ae / targets.numel(), weights


def _train(model, steps: int, draw, probe: "tuple[torch.Tensor, torch.Tensor]") -> dict:
    """The schedule every contender gets: ``steps`` Adam steps on ``draw() -> (inputs, targets)``,
    cosine-decayed, the held-out MSE of ``probe`` measured at ``_eval_points``. Returns the
    losses, times per step and held-out curve, and the losses' summary columns."""
    opt, sched = _optimizer(model, steps)
    points, losses, times, heldout = set(_eval_points(steps)), [], [], []
    for step in range(1, steps + 1):
        inputs, targets = draw()
        start = time.perf_counter()
        losses.append(train_step(model, inputs, targets, opt))  # its read waits for the step
        sched.step()
        times.append(time.perf_counter() - start)
        if step in points:
            heldout.append((step, _evaluate(model, *probe)[0]))
    columns = dict(step_s=statistics.median(times[1:] or times), train_mse_first=statistics.mean(losses[:3]),
                   train_mse_last=statistics.mean(losses[-3:]), heldout_change_last_fifth=_last_fifth_change(heldout))
    return dict(losses=losses, heldout=heldout, columns=columns)


def train_image(s: ImageSetting, name: str, seed: int, device: str = "cpu") -> "tuple[dict, dict]":
    """Train one autoencoder; (row of measures, curves {"train": [...], "heldout": [(step, mse)]})."""
    train, test = (t.to(device) for t in _images(s, seed))
    torch.manual_seed(seed)
    q = make_quantizer(name, s.dim)
    model = AutoEncoder(3, s.dim, q).to(device)
    gen = torch.Generator().manual_seed(seed)

    def draw():
        x = train[torch.randint(train.shape[0], (s.batch,), generator=gen).to(device)]
        return x, x

    probe = test[: min(512, test.shape[0])]
    run = _train(model, s.steps, draw, (probe, probe))
    test_mse, _, weights = _evaluate(model, test, test)
    row = dict(test_mse=test_mse, psnr=_psnr(test_mse), **run["columns"])
    if q is not None:
        model.eval()
        row.update(_usage(q, weights), codebook_size=_codebook_size(q))
        row.update(_rate_rows(model, q, train, test))
    return row, dict(train=run["losses"], heldout=run["heldout"])


def _last_fifth_change(heldout: "list[tuple[int, float]]") -> float:
    """Relative fall of the held-out MSE over the last fifth of training (0: flat)."""
    if len(heldout) < 2:
        return float("nan")
    end_step, end = heldout[-1]
    start = min(heldout, key=lambda p: abs(p[0] - 0.8 * end_step))[1]
    return (start - end) / end


def train_forecast(s: ForecastSetting, name: str, seed: int, device: str = "cpu") -> "tuple[dict, dict]":
    """Train one forecaster; (row of measures, curves)."""
    train, test = (t.to(device) for t in _sequences(s, seed))
    T = s.frames
    torch.manual_seed(seed)
    q = make_quantizer(name, s.dim)
    model = SimVP(T, q, hid_s=s.dim).to(device)
    gen = torch.Generator().manual_seed(seed)

    def draw():
        seq = train[torch.randint(train.shape[0], (s.batch,), generator=gen).to(device)]
        return seq[:, :T], seq[:, T:]

    probe = test[: min(128, test.shape[0])]
    run = _train(model, s.steps, draw, (probe[:, :T], probe[:, T:]))
    mse, mae, weights = _evaluate(model, test[:, :T], test[:, T:], chunk=64)
    frame_pixels = test.shape[-1] * test.shape[-2]
    row = dict(test_mse=mse, test_mae=mae, mse_per_frame=mse * frame_pixels, mae_per_frame=mae * frame_pixels,
               **run["columns"])
    if q is not None:
        row.update(_usage(q, weights), codebook_size=_codebook_size(q))
    return row, dict(train=run["losses"], heldout=run["heldout"])


# -- running -----------------------------------------------------------------------------------------


def _one_thread() -> None:
    torch.set_num_threads(1)


def _job(task: str, setting, name: str, seed: int, device: str = "cpu"):
    row, curves = (train_image if task == "images" else train_forecast)(setting, name, seed, device)
    return task, setting.name, name, seed, row, curves


def run(quick: bool = False, seed: int = 0, workers: Optional[int] = None, progress: bool = True, device: str = "cpu",
        scale: float = 1.0):
    """Every (setting, contender, seed) run; returns (rows, curves {(setting, contender): [curves]}).

    ``workers``: processes running at once, one thread each (default: 1 in quick mode or on
    CUDA, else the number of cores, at most 4); with more than one, the CPU kernels are compiled
    first (:func:`scq.precompile.compile_kernels`). ``scale``: see :func:`settings`."""
    image_settings, forecast_settings = settings(quick, scale)
    jobs = [("images", s, name, sd + seed) for s in image_settings for sd in s.seeds for name in s.contenders]
    jobs += [("forecast", s, name, sd + seed) for s in forecast_settings for sd in s.seeds for name in s.contenders]
    workers = workers or (1 if quick or device != "cpu" else min(4, os.cpu_count() or 1))
    meta = machine_info(device, torch.float32)
    meta.update(threads=1 if workers > 1 else torch.get_num_threads(), workers=workers)
    rows, curves = [], {}
    bar = tqdm(total=len(jobs), desc="study", disable=not progress)

    def collect(result):
        task, setting, name, sd, row, curve = result
        rows.append(dict(meta, task=task, setting=setting, contender=name, family=family(name), seed=sd, **row))
        curves.setdefault((setting, name), []).append(curve)
        bar.set_postfix_str(f"{setting} {name} seed={sd}")
        bar.update()

    if workers == 1:
        for job in jobs:
            collect(_job(*job, device))
    else:
        import multiprocessing

        from scq.precompile import compile_kernels

        # Each worker that found Numba's cache empty would compile the same kernels at its first
        # solve, side by side, inside its timed steps: compiled once first instead (a few seconds
        # when they are cached already). Float32 training: float32 and float64 systems.
        compile_kernels(("float32", "float32-precise"), progress=progress)
        # Longest first, so that no long run starts last.
        slow = ("scq-pgd", "rscq", "svq-lasso", "scq-relaxed")
        jobs.sort(key=lambda j: (not any(j[2].startswith(p) for p in slow), j[0] != "forecast"))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
            for fut in as_completed([pool.submit(_job, *job, device) for job in jobs]):
                collect(fut.result())
    bar.close()
    order = {(t, s.name, n, sd): i for i, (t, s, n, sd) in enumerate(
        [("images", s, n, sd + seed) for s in image_settings for n in s.contenders for sd in s.seeds]
        + [("forecast", s, n, sd + seed) for s in forecast_settings for n in s.contenders for sd in s.seeds])}
    rows.sort(key=lambda r: order[(r["task"], r["setting"], r["contender"], r["seed"])])
    return rows, curves


# -- summaries ---------------------------------------------------------------------------------------

SUMMARY_KEYS = ("test_mse", "psnr", "bits", "mse_b8", "bits_b8", "mse_b4", "bits_b4", "perplexity", "soft_perplexity",
                "usage_pct", "dead_codes", "support_size", "step_s", "heldout_change_last_fifth")
FORECAST_KEYS = ("test_mse", "test_mae", "mse_per_frame", "mae_per_frame", "perplexity", "soft_perplexity", "usage_pct",
                 "dead_codes", "support_size", "step_s", "heldout_change_last_fifth")


def _mean(rows: "list[dict]", key: str) -> float:
    vals = [r[key] for r in rows if key in r and r[key] == r[key]]
    return statistics.mean(vals) if vals else float("nan")


def _cell(vals: "list[float]") -> "str | float":
    if not vals:
        return ""
    if len(vals) == 1:
        return float(vals[0])
    return f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"


def summary(rows: "list[dict]", task: str = "images") -> "list[dict]":
    """Mean ± std over seeds per (setting, contender)."""
    keys = SUMMARY_KEYS if task == "images" else FORECAST_KEYS
    out = []
    groups: dict = {}
    for r in rows:
        if r["task"] == task:
            groups.setdefault((r["setting"], r["contender"]), []).append(r)
    for (setting, name), group in groups.items():
        s = dict(setting=setting, contender=name, seeds=len(group), codebook_size=group[0].get("codebook_size", ""))
        for k in keys:
            s[k] = _cell([r[k] for r in group if k in r and r[k] == r[k]])
        out.append(s)
    return out


def rd_points(rows: "list[dict]", setting: str) -> "list[dict]":
    """Rate–distortion points (mean over seeds): one per contender and weight precision."""
    pts, groups = [], {}
    for r in rows:
        if r["task"] == "images" and r["setting"] == setting and "bits" in r:
            groups.setdefault(r["contender"], []).append(r)
    for name, group in groups.items():
        hard = "mse_b8" not in group[0]
        precisions = [("index", "bits", "test_mse")] if hard else [
            ("float32", "bits", "test_mse")] + [(f"{b}-bit", f"bits_b{b}", f"mse_b{b}") for b in WEIGHT_BITS]
        for label, bkey, mkey in precisions:
            pts.append(dict(contender=name, family=family(name), weights=label, hard=hard,
                            bits=_mean(group, bkey), mse=_mean(group, mkey)))
    return pts


def matched_bits(points: "list[dict]") -> "list[dict]":
    """Each soft point with rounded weights against the best hard quantizer (VQ, residual VQ,
    either library) spending no more bits: the MSE ratio (> 1: the soft point is better), and the
    bits the hard frontier needs to reach the soft point's MSE (log-linear between its points)."""
    hard = sorted((p for p in points if p["hard"]), key=lambda p: p["bits"])
    out = []
    for p in points:
        if p["hard"] or p["weights"] == "float32":
            continue
        within = [h for h in hard if h["bits"] <= p["bits"] + 1e-9]
        best = min(within, key=lambda h: h["mse"]) if within else None
        out.append(dict(contender=p["contender"], weights=p["weights"], bits=p["bits"], mse=p["mse"],
                        best_hard_within=best["contender"] if best else "none",
                        hard_mse=best["mse"] if best else float("nan"),
                        hard_over_soft=(best["mse"] / p["mse"]) if best else float("nan"),
                        hard_bits_for_same_mse=_bits_needed(hard, p["mse"])))
    return out


def _bits_needed(hard: "list[dict]", mse: float) -> float:
    """Bits the hard frontier (best MSE at ≤ each rate) needs to reach ``mse``; inf if it never does."""
    frontier, best = [], float("inf")
    for h in hard:
        if h["mse"] < best:
            best = h["mse"]
            frontier.append((h["bits"], h["mse"]))
    if not frontier or frontier[-1][1] > mse:
        return float("inf")
    if frontier[0][1] <= mse:
        return frontier[0][0]
    for (b0, m0), (b1, m1) in zip(frontier, frontier[1:]):
        if m1 <= mse <= m0:
            t = (math.log(m0) - math.log(mse)) / (math.log(m0) - math.log(m1))
            return b0 + t * (b1 - b0)
    return float("inf")


def _family_cost(cmp: "list[dict]", hard: "list[dict]") -> str:
    """How many bits a soft family spends against the hard frontier at equal MSE, at its best."""
    beyond = [c for c in cmp if c["hard_bits_for_same_mse"] == float("inf")]
    if beyond:
        c = min(beyond, key=lambda c: c["bits"])
        best_hard = min(hard, key=lambda h: h["mse"]) if hard else None
        return (f"reaches an MSE no hard quantizer here reaches ({c['mse']:.3g} with {c['weights']} weights, "
                f"{c['contender']}; best hard {best_hard['mse']:.3g} at {best_hard['bits']:.0f} bits), "
                f"at {c['bits']:.0f} bits per vector ({c['bits'] / best_hard['bits']:.0f}× those bits).")
    # Points worse than the frontier's cheapest point have no interpolated match (it would be
    # "at most that many bits"): they are compared only when nothing else is left.
    cheapest = min(hard, key=lambda h: h["bits"])["mse"] if hard else float("inf")
    inside = [c for c in cmp if c["mse"] <= cheapest] or cmp
    c = min(inside, key=lambda c: c["bits"] / c["hard_bits_for_same_mse"])
    at_most = "" if c["mse"] <= cheapest else "at least "
    return (f"at best ({c['contender']}, {c['weights']} weights) {c['bits']:.0f} bits per vector for MSE "
            f"{c['mse']:.3g}, which the hard frontier reaches with {'at most ' if at_most else ''}"
            f"{c['hard_bits_for_same_mse']:.1f} bits: {at_most}{c['bits'] / c['hard_bits_for_same_mse']:.1f}× the "
            f"bits for the same distortion.")


def findings(rows: "list[dict]") -> "list[str]":
    """The answers in plain words, computed from the rows (nothing here is typed in by hand)."""
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows if r["task"] == "images"):
        pts = rd_points(rows, setting)
        cmp = matched_bits(pts)
        if not cmp:
            continue
        wins = [c for c in cmp if c["hard_over_soft"] > 1]
        best = max(cmp, key=lambda c: c["hard_over_soft"] if c["hard_over_soft"] == c["hard_over_soft"] else -1)
        worst = min(cmp, key=lambda c: c["hard_over_soft"] if c["hard_over_soft"] == c["hard_over_soft"] else float("inf"))
        lines.append(
            f"**{setting}: does a soft quantizer beat hard VQ at equal bits?** {len(wins)} of {len(cmp)} soft points "
            f"(contender × weight precision) reach a lower held-out MSE than the best hard quantizer (VQ or residual "
            f"VQ, either library) that spends no more bits. Best: {best['contender']} with {best['weights']} "
            f"weights, {best['bits']:.1f} bits/vector, MSE {best['mse']:.3g} against {best['hard_mse']:.3g} for "
            f"{best['best_hard_within']} ({best['hard_over_soft']:.2f}×). Worst: {worst['contender']} "
            f"({worst['weights']}), {worst['bits']:.1f} bits, {worst['hard_over_soft']:.2f}×.")
        for fam in dict.fromkeys(family(c["contender"]) for c in cmp):
            lines.append(f"{setting}, {fam}: " + _family_cost([c for c in cmp if family(c["contender"]) == fam],
                                                               [p for p in pts if p["hard"]]))
        hard_pts = [p for p in pts if p["hard"]]
        none = [r for r in rows if r["setting"] == setting and r["contender"] == "none"]
        if hard_pts and none:
            top = min(hard_pts, key=lambda p: p["mse"])
            lines.append(f"{setting}: the unquantized autoencoder reaches MSE {_mean(none, 'test_mse'):.3g}; "
                         f"the best hard quantizer {top['mse']:.3g} ({top['contender']}, {top['bits']:.0f} bits).")
    frows = [r for r in rows if r["task"] == "forecast"]
    if frows:
        base = _mean([r for r in frows if r["contender"] == "none"], "test_mse")
        parts = [f"{name} {statistics.mean(ch):+.1f}%" + (f" (± {statistics.stdev(ch):.1f}%)" if len(ch) > 1 else "")
                 for name, ch in forecast_changes(rows).items()]
        lines.append(f"**Forecasting: does a quantizer in the bottleneck help?** Held-out next-frames MSE against "
                     f"the same model and seed without one (mean MSE {base:.4g}), mean over seeds (± std): "
                     + ", ".join(parts) + ". Negative is better; the SVQ paper reports −7.9% on WeatherBench-S t2m.")
    flat = [r for r in rows if r.get("heldout_change_last_fifth", 0) > 0.05]
    lines.append(f"Schedules: {len(rows) - len(flat)} of {len(rows)} runs moved less than 5% on held-out MSE over the "
                 f"last fifth of training" + (f"; still falling: {', '.join(sorted({r['setting'] + ' ' + r['contender'] for r in flat})[:8])}"
                                            if flat else "") + ".")
    return lines


# -- the report ---------------------------------------------------------------------------------------


def forecast_changes(rows: "list[dict]") -> dict:
    """{contender: [change of held-out MSE in % against no quantizer, per seed]} (same seed's baseline)."""
    frows = [r for r in rows if r["task"] == "forecast"]
    base = {r["seed"]: r["test_mse"] for r in frows if r["contender"] == "none"}
    out: dict = {}
    for r in frows:
        if r["contender"] != "none" and r["seed"] in base:
            out.setdefault(r["contender"], []).append(100 * (r["test_mse"] - base[r["seed"]]) / base[r["seed"]])
    return out


def report(rows: "list[dict]", curves: dict, out_dir, note: str = "") -> "tuple[list[str], list[dict], list[dict]]":
    """Markdown sections, rate–distortion points and matched-bits rows; with ``out_dir``, the PNGs."""
    from . import plots
    from .common import format_table

    image_settings = list(dict.fromkeys(r["setting"] for r in rows if r["task"] == "images"))
    points = {s: rd_points(rows, s) for s in image_settings}
    matched = [dict(setting=s, **m) for s in image_settings for m in matched_bits(points[s])]
    all_points = [dict(setting=s, **p) for s in image_settings for p in points[s]]
    md = ["## Findings (computed from the rows below)\n", *[f"- {line}" for line in findings(rows)], ""]
    md += ["## Rate–distortion: held-out MSE against bits per latent vector (mean over seeds)\n",
           "Hard codes cost log₂K bits per stage; soft weights cost (nonzero rounded weights)·(log₂K + b) "
           "(benchmarks/rate.py); `float32` rows send unrounded weights (b = 32).\n",
           format_table(all_points, ["setting", "contender", "weights", "bits", "mse"]), "",
           "## Soft quantizers against the best hard quantizer at no more bits\n",
           "`hard_over_soft` > 1: the soft quantizer reconstructs better at equal (or fewer) bits; "
           "`hard_bits_for_same_mse`: bits the hard frontier needs to match it (log-linear between its points; "
           "inf: it never does).\n",
           format_table(matched, ["setting", "contender", "weights", "bits", "mse", "best_hard_within", "hard_mse",
                                  "hard_over_soft", "hard_bits_for_same_mse"]), ""]
    md += ["## Images: every contender (held-out set; mean ± std over seeds)\n",
           format_table(summary(rows, "images"), ["setting", "contender", "seeds", "codebook_size", *SUMMARY_KEYS]), ""]
    if any(r["task"] == "forecast" for r in rows):
        changes = forecast_changes(rows)
        md += ["## Forecasting moving digits: next 4 frames from 4 (held-out sequences; mean ± std over seeds)\n",
               format_table(summary(rows, "forecast"), ["setting", "contender", "seeds", "codebook_size", *FORECAST_KEYS]),
               "", format_table([dict(contender=k, change_pct=_cell(v)) for k, v in changes.items()],
                                ["contender", "change_pct"]), ""]
    if out_dir is not None:
        none = {s: _mean([r for r in rows if r["setting"] == s and r["contender"] == "none"], "test_mse") for s in image_settings}
        plots.rate_distortion(points, none, out_dir / "study_rate_distortion.png", note)
        plots.heldout_curves(curves, out_dir / "study_heldout_curves.png", note)
        if any(r["task"] == "forecast" for r in rows):
            plots.relative_bars(forecast_changes(rows), out_dir / "study_forecasting.png",
                                "Forecasting: held-out MSE against no quantizer (per seed pair)", note)
        md += ["![rate–distortion](study_rate_distortion.png)\n", "![held-out curves](study_heldout_curves.png)\n",
               "![forecasting](study_forecasting.png)\n"]
    return md, all_points, matched
