"""``scq bench``: runs the parts, prints their tables, writes CSV, markdown and PNG to ``--out``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from . import exactness, plots, runtime, usage
from .common import format_table, write_csv

PARTS = ("exactness", "runtime", "usage")


def _emit(title: str, table: str, md: list) -> None:
    print(f"\n## {title}\n\n{table}\n", flush=True)
    md.append(f"## {title}\n\n{table}\n")


def run(part: str = "all", *, quick: bool = False, out: Optional[str] = None, device: str = "cpu", seed: int = 0) -> dict:
    """Run ``part`` (or all parts); returns {part: rows}."""
    torch.manual_seed(seed)
    parts = PARTS if part == "all" else (part,)
    out_dir = Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    md: list[str] = []
    results: dict = {}
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
            plots.exactness_vs_lambda(rows, out_dir / "exactness_vs_lambda.png")
    if "runtime" in parts:
        rows = runtime.run(quick=quick, device=device, seed=seed)
        results["runtime"] = rows
        cols = ["sweep", "method", "N", "K", "D", "fwd_s", "fwdbwd_s", "fwd_vs_vq", "fwdbwd_vs_vq", "peak_mb",
                "max_dev", "support_size", "status"]
        _emit("Runtime: headline (float32, forward+backward; ratios to scq's VQ at the same size)",
              format_table(runtime.headline(rows), cols), md)
        _emit("Runtime (every measurement)", format_table(rows, cols), md)
        if out_dir:
            write_csv(out_dir / "runtime.csv", rows)
            plots.runtime_sweeps(rows, out_dir / "runtime_sweeps.png")
    if "usage" in parts:
        rows, curves = usage.run(quick=quick, device=device, seed=seed)
        results["usage"] = rows
        _emit("Codebook usage on real images (held-out set; mean ± std over seeds)", format_table(usage.summary(rows), [
            "dataset", "quantizer", "seeds", "codebook_size", "test_mse", "perplexity", "usage_pct", "dead_codes",
            "support_size", "step_s"]), md)
        if out_dir:
            write_csv(out_dir / "usage.csv", rows)
            plots.training_curves(curves, out_dir / "usage_training_curves.png")
    if out_dir:
        (out_dir / "results.md").write_text("\n".join(md))
        print(f"results written to {out_dir}/")
    return results
