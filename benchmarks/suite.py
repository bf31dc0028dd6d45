"""``scq bench``: runs the parts, prints their tables, writes CSV, markdown and PNG to ``--out``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from . import ablation, contention, exactness, plots, runtime, study, usage
from .common import format_table, load_average, load_warnings, write_csv

PARTS = ("exactness", "runtime", "contention", "usage")
# Run on its own (``scq bench study``), not by "all": its full mode takes about 20 minutes on 2 cores.
STUDY = "study"


def _emit(title: str, table: str, md: list) -> None:
    print(f"\n## {title}\n\n{table}\n", flush=True)
    md.append(f"## {title}\n\n{table}\n")


def _write_markdown(out_dir: Path, part: str, sections: list) -> None:
    """``{part}.md`` for this run's part, and ``results.md`` joining every part's file present."""
    (out_dir / f"{part}.md").write_text("\n".join(sections))
    present = [out_dir / f"{p}.md" for p in PARTS if (out_dir / f"{p}.md").exists()]
    (out_dir / "results.md").write_text("\n".join(f.read_text() for f in present))


SMOKE = ("Smoke run (--quick): sizes too small and runs too short for these numbers to be results; "
         "run without --quick for those.")
SMOKE_PLOT = "smoke run (--quick): not results"


def _warn(part: str, before: float, rows, md: list) -> None:
    """Print and record why this part's timings may be unreliable (see ``load_warnings``)."""
    warnings = load_warnings(part, before, load_average(), rows)
    for w in warnings:
        print(f"WARNING: {w}", flush=True)
    md.append(f"Load average before/after: {before:.2f} / {load_average():.2f}.\n")
    md += [f"**Warning**: {w}.\n" for w in warnings]


def run(part: str = "all", *, quick: bool = False, out: Optional[str] = None, device: str = "cpu", seed: int = 0,
        workers: Optional[int] = None, scale: float = 1.0) -> dict:
    """Run ``part`` (or all parts but the study); returns {part: rows}."""
    torch.manual_seed(seed)
    if part == STUDY:
        return {STUDY: run_study(quick=quick, out=out, seed=seed, workers=workers, device=device, scale=scale)}
    parts = PARTS if part == "all" else (part,)
    out_dir = Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    note = SMOKE_PLOT if quick else ""
    start_md = [f"> {SMOKE}\n"] if quick else []
    if quick:
        print(SMOKE, flush=True)
    md: list[str] = list(start_md)
    before = load_average()
    if "exactness" in parts:
        rows = exactness.run(quick=quick, device=device, seed=seed)
        results["exactness"] = rows
        _emit("Exactness (worst case over the grid, per method and λ)",
              format_table(exactness.summary(rows), ["method", "lam", "max_dev", "mean_l1_dev", "rel_obj_gap", "grad_dev", "seconds"]), md)
        _emit("Exactness (every measurement)", format_table(rows, [
            "method", "K", "D", "lam", "codebook", "max_dev", "rel_obj_gap", "grad_dev", "seconds",
            "support_size", "perplexity", "usage"]), md)
        lasso_rows = exactness.run_lasso(quick=quick, seed=seed)
        results["exactness-lasso"] = lasso_rows
        _emit("Exactness of the lasso solvers (SVQ's exact problem)", format_table(
            lasso_rows, ["method", "K", "D", "alpha", "nonneg", "max_dev", "seconds", "support_size"]), md)
        if out_dir:
            write_csv(out_dir / "exactness.csv", rows)
            write_csv(out_dir / "exactness_lasso.csv", lasso_rows)
            plots.exactness_vs_lambda(rows, out_dir / "exactness_vs_lambda.png", note)
        _warn("exactness", before, [], md)
        if out_dir:
            _write_markdown(out_dir, "exactness", md)
        md, before = list(start_md), load_average()
    if "runtime" in parts:
        rows = runtime.run(quick=quick, device=device, seed=seed,
                           checkpoint=out_dir / "runtime.csv" if out_dir else None)
        results["runtime"] = rows
        cols = ["sweep", "codebook", "method", "N", "K", "D", "fwd_s", "fwdbwd_s", "fwd_vs_vq", "fwdbwd_vs_vq", "peak_mb",
                "max_dev", "converged", "support_size", "status"]
        _emit("Runtime: headline (float32, forward+backward; ratios to scq's VQ at the same size)",
              format_table(runtime.headline(rows), cols), md)
        _emit("Runtime: each method's worst forward+backward ratio to scq's VQ over the N, K and D sweeps",
              format_table(runtime.worst_ratios(rows), ["method", "codebook", "worst_fwdbwd_vs_vq", "at"]), md)
        _emit("Runtime (every measurement)", format_table(rows, cols), md)
        ab_rows = ablation.run(quick=quick, device=device, seed=seed)
        results["ablation"] = ab_rows
        _emit("What each idea inside pgd buys (forward+backward, ratios to the default)", format_table(ab_rows, [
            "config", "N", "K", "D", "fwdbwd_s", "vs_default", "rounds", "inner_iterations", "final_working_set",
            "converged"]), md)
        _warn("runtime", before, rows + ab_rows, md)
        if out_dir:
            write_csv(out_dir / "runtime.csv", rows)
            write_csv(out_dir / "ablation.csv", ab_rows)
            plots.runtime_sweeps(rows, out_dir / "runtime_sweeps.png", note)
            _write_markdown(out_dir, "runtime", md)
        md, before = list(start_md), load_average()
    if "contention" in parts and device == "cpu":
        c_rows = contention.run(quick=quick, seed=seed)
        results["contention"] = c_rows
        _emit(f"Contention: forward+backward idle and beside {contention.BUSY} busy processes "
              "(slowdown = time / mean idle time)", format_table(c_rows, [
                  "N", "K", "D", "method", "scenario", "fwdbwd_s", "slowdown", "spread", "load_before",
                  "load_after"]), md)
        if out_dir:
            write_csv(out_dir / "contention.csv", c_rows)
            _write_markdown(out_dir, "contention", md)
        md, before = list(start_md), load_average()
    if "usage" in parts:
        rows, curves = usage.run(quick=quick, device=device, seed=seed)
        results["usage"] = rows
        _emit("Codebook usage on real images (held-out set; mean ± std over seeds)", format_table(usage.summary(rows), [
            "dataset", "quantizer", "seeds", "codebook_size", "test_mse", "perplexity", "usage_pct", "dead_codes",
            "support_size", "step_s"]), md)
        _warn("usage", before, [], md)
        if out_dir:
            write_csv(out_dir / "usage.csv", rows)
            plots.training_curves(curves, out_dir / "usage_training_curves.png", note)
            _write_markdown(out_dir, "usage", md)
    return results


STUDY_INTRO = """# The study: do the papers' claims hold?

Soft convex quantization (SCQ) and sparse soft VQ (SVQ) against strong hard baselines (k-means
init, dead-code replacement, EMA codebooks; scq's and vector-quantize-pytorch's), trained from
scratch on the same models: rate–distortion on image patches (every image bundled with
scikit-image and scikit-learn, held-out images never seen in training) and next-frames
forecasting of moving digits. What each contender is, how bits are counted and how training runs:
`benchmarks/study.py` and `benchmarks/rate.py`.
"""


def run_study(*, quick: bool = False, out: Optional[str] = None, seed: int = 0, workers: Optional[int] = None,
              device: str = "cpu", scale: float = 1.0) -> list:
    """The study part: rows, and with ``out`` study.csv, study_rd.csv, study_matched.csv, study.md and PNGs."""
    import time

    if quick:
        print(SMOKE, flush=True)
    before, start = load_average(), time.perf_counter()
    rows, curves = study.run(quick=quick, seed=seed, workers=workers, device=device, scale=scale)
    command = f"scq bench study{' --quick' if quick else ''} --seed {seed} --device {device} --scale {scale:g}"
    write_study(rows, curves, out, quick=quick, command=command, minutes=(time.perf_counter() - start) / 60,
                load_before=before)
    return rows


def write_study(rows: list, curves: dict, out: Optional[str], *, quick: bool, command: str, minutes: float,
                load_before: float) -> None:
    """Print the study's findings; with ``out``, write its CSVs, markdown and plots."""
    out_dir = Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    md_body, points, matched = study.report(rows, curves, out_dir, SMOKE_PLOT if quick else "")
    workers_used = rows[0]["workers"] if rows else 1
    md = [STUDY_INTRO, *([f"> {SMOKE}\n"] if quick else []),
          f"Command: `{command}`; {len(rows)} training runs in {minutes:.0f} min on "
          f"{rows[0]['machine'] if rows else '?'}, {workers_used} run(s) at once, one thread each "
          f"(times per step are one-thread times beside the other runs).\n", *md_body]
    for line in md_body[1:]:
        if line.startswith("- "):
            print(line, flush=True)
    _warn("study", load_before, [], md)
    if out_dir:
        write_csv(out_dir / "study.csv", rows)
        write_csv(out_dir / "study_rd.csv", points)
        write_csv(out_dir / "study_matched.csv", matched)
        (out_dir / "study.md").write_text("\n".join(md))
