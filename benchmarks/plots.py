"""PNG plots of the benchmark results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _label(fig, note: str) -> None:
    """A line across the figure's top saying what it is not (e.g. a smoke run's figures)."""
    if note:
        fig.text(0.5, 0.995, note, ha="center", va="top", fontsize=9, color="tab:red")


def exactness_vs_lambda(rows: list[dict], path: Path, note: str = "") -> None:
    """Worst weight deviation from the exact solution against λ, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "max_dev", "max |p − p*|"), (axes[1], "rel_obj_gap", "relative objective gap")):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["lam"], r[key]) for r in rows if r["method"] == method)
            lams = sorted({l for l, _ in pts})
            worst = [max(v for l2, v in pts if l2 == l) for l in lams]
            ax.plot(lams, [max(w, 1e-16) for w in worst], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("λ")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("Exactness against λ (worst case over K, D and codebooks)")
    fig.tight_layout()
    _label(fig, note)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def runtime_sweeps(rows: list[dict], path: Path, note: str = "") -> None:
    """Log-log forward+backward time against N, K and D, one line per method."""
    sweeps = [s for s in ("N", "K", "D") if any(r["sweep"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        pts = [r for r in rows if r["sweep"] == sweep and r.get("status") == "ok"]
        for method in sorted({r["method"] for r in pts}):
            xs = sorted((r[sweep], r["fwdbwd_s"]) for r in pts if r["method"] == method)
            ax.plot([x for x, _ in xs], [t for _, t in xs], marker="o", label=method)
        fixed = {k: pts[0][k] for k in ("N", "K", "D") if k != sweep} if pts else {}
        ax.set_title(f"against {sweep} (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(sweep)
        ax.set_ylabel("forward+backward time (s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _label(fig, note)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(curves: dict, path: Path, note: str = "") -> None:
    """Training reconstruction MSE per step (mean over seeds), one panel per data set."""
    datasets = list(dict.fromkeys(ds for ds, _ in curves))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for (d, q), runs in curves.items():
            if d != ds:
                continue
            n = min(len(r) for r in runs)
            mean = [sum(r[i] for r in runs) / len(runs) for i in range(n)]
            ax.plot(range(1, n + 1), mean, label=q)
        ax.set_yscale("log")
        ax.set_title(f"{ds}: training reconstruction MSE")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _label(fig, note)
    fig.savefig(path, dpi=110)
    plt.close(fig)
