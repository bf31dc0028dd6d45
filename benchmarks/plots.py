"""PNG plots of the benchmark results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402


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
    """Log-log forward+backward time against N, K and D, one line per method; one row of panels
    per codebook kind the sweeps ran on."""
    sweeps = [s for s in ("N", "K", "D") if any(r["sweep"] == s for r in rows)]
    kinds = list(dict.fromkeys(r.get("codebook", "data_like") for r in rows if r["sweep"] in sweeps))
    fig, axes = plt.subplots(max(1, len(kinds)), max(1, len(sweeps)), figsize=(5 * len(sweeps), 4 * len(kinds)),
                             squeeze=False)
    for row_axes, kind in zip(axes, kinds):
        for ax, sweep in zip(row_axes, sweeps):
            pts = [r for r in rows if r["sweep"] == sweep and r.get("status") == "ok"
                   and r.get("codebook", "data_like") == kind]
            for method in sorted({r["method"] for r in pts}):
                xs = sorted((r[sweep], r["fwdbwd_s"]) for r in pts if r["method"] == method)
                ax.plot([x for x, _ in xs], [t for _, t in xs], marker="o", label=method)
            fixed = {k: pts[0][k] for k in ("N", "K", "D") if k != sweep} if pts else {}
            ax.set_title(f"{kind}: against {sweep} (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")")
            ax.set_xscale("log")
            ax.set_yscale("log")
            xs_all = sorted({r[sweep] for r in pts})
            ax.set_xticks(xs_all, [str(x) for x in xs_all])  # the sweep's own points, not log-scale minors
            ax.xaxis.set_minor_formatter(NullFormatter())
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


def rate_distortion(points: dict, none_mse: dict, path: Path, note: str = "") -> None:
    """Held-out MSE against bits per vector, one panel per setting ({setting: rd points}); one line
    per contender family and weight precision (hard codes: solid; soft weights: float32 dotted,
    8-bit dashed, 4-bit solid; a family of one contender: its precisions joined), the
    unquantized model as a grey line."""
    settings = list(points)
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 5), squeeze=False)
    styles = {"index": "-", "float32": ":", "8-bit": "--", "4-bit": "-"}
    for ax, setting in zip(axes[0], settings):
        pts = points[setting]
        colors = {}
        for fam in dict.fromkeys(p["family"] for p in pts):
            members = [p for p in pts if p["family"] == fam]
            if len({p["contender"] for p in members}) == 1 and len(members) > 1:
                # One contender: its own precisions as one line (how rounding moves it).
                lines = [("weights " + ", ".join(p["weights"] for p in members), ":", members)]
            else:  # a sweep (K, stages or λ): one line per precision
                lines = [(w, styles.get(w, "-"), [p for p in members if p["weights"] == w])
                         for w in dict.fromkeys(p["weights"] for p in members)]
            for label, style, group in lines:
                line = sorted((p["bits"], p["mse"]) for p in group)
                kw = dict(color=colors[fam]) if fam in colors else {}
                drawn = ax.plot([b for b, _ in line], [m for _, m in line], style, marker="o", markersize=4,
                                label=f"{fam} ({label})", **kw)
                colors.setdefault(fam, drawn[0].get_color())
        if setting in none_mse:
            ax.axhline(none_mse[setting], color="grey", lw=1, label="no quantizer")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("bits per latent vector (log)")
        ax.set_ylabel("held-out MSE (log)")
        ax.set_title(f"{setting}: rate–distortion (mean over seeds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _label(fig, note)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heldout_curves(curves: dict, path: Path, note: str = "") -> None:
    """Held-out MSE during training (mean over seeds), one panel per setting: did it flatten?"""
    settings = list(dict.fromkeys(s for s, _ in curves))
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for (s, name), runs in curves.items():
            if s != setting or not runs[0]["heldout"]:
                continue
            steps = [p[0] for p in runs[0]["heldout"]]
            mean = [sum(r["heldout"][i][1] for r in runs) / len(runs) for i in range(len(steps))]
            ax.plot(steps, mean, label=name, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out MSE")
        ax.set_title(f"{setting}: held-out MSE during training")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _label(fig, note)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def relative_bars(groups: dict, path: Path, title: str, note: str = "") -> None:
    """Bars of {name: [relative changes in %, one per seed]}: mean and ± std."""
    import statistics

    names = list(groups)
    means = [statistics.mean(groups[n]) for n in names]
    stds = [statistics.stdev(groups[n]) if len(groups[n]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4))
    ax.bar(names, means, yerr=stds, capsize=4, color=["tab:green" if m < 0 else "tab:red" for m in means])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("change in held-out MSE (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    _label(fig, note)
    fig.savefig(path, dpi=110)
    plt.close(fig)
