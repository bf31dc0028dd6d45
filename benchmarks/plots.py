"""PNG plots of the benchmark results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def exactness_vs_lambda(rows: list[dict], path: Path) -> None:
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
