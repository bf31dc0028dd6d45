"""`scq bench` end to end into a temporary folder: files, columns and rows (not the numbers)."""

import csv

import pytest
import torch

from scq.cli import main


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_bench_quick_all_parts_writes_to_the_default_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 0
    assert "results written to scq-bench-results/" in capsys.readouterr().out
    tmp_path = tmp_path / "scq-bench-results"
    rows = _read(tmp_path / "exactness.csv")
    assert {r["method"] for r in rows} == {"exact", "relaxed", "pgd", "vq"}
    for col in ("machine", "torch", "dtype", "device", "threads", "K", "D", "lam", "max_dev", "rel_obj_gap",
                "grad_dev", "seconds", "perplexity", "usage", "support_size"):
        assert col in rows[0], col
    assert {float(r["lam"]) for r in rows} == {0.01, 0.1, 1.0, 10.0}
    assert "| method" in (tmp_path / "results.md").read_text()
    for name in ("exactness.csv", "exactness_lasso.csv", "runtime.csv", "ablation.csv", "usage.csv", "results.md",
                 "exactness_vs_lambda.png",
                 "runtime_sweeps.png", "usage_training_curves.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    runtime = _read(tmp_path / "runtime.csv")
    assert {"vq", "vector-quantize-pytorch", "scq-relaxed", "scq-pgd", "scq-exact", "svq-mlp", "svq-lasso",
            "svq-lasso-default"} <= {r["method"] for r in runtime}
    # SVQ's own regime (its default α on N(0, 1) codes) is timed beside the data-like one
    assert {r["codebook"] for r in runtime if r["method"] == "svq-lasso-default"} == {"random"}
    for col in ("machine", "torch", "dtype", "device", "threads", "sweep", "N", "K", "D", "fwd_s", "fwdbwd_s",
                "fwdbwd_vs_vq", "peak_mb", "max_dev", "status"):
        assert col in runtime[0], col
    assert {r["sweep"] for r in runtime} == {"N", "K", "D", "peers", "svq", "codebooks"}
    assert {r["codebook"] for r in runtime if r["sweep"] == "codebooks"} == {"data_like", "random", "near_inputs"}
    usage = _read(tmp_path / "usage.csv")
    assert {r["quantizer"] for r in usage} == {"none", "vq", "vq-strong", "vqp-strong", "scq-relaxed",
                                               "scq-relaxed-strong", "scq-pgd", "scq-pgd-strong", "svq-mlp"}
    assert {r["dataset"] for r in usage} == {"photos", "digits"}
    for col in ("test_mse", "perplexity", "usage_pct", "dead_codes", "support_size", "step_s", "seed"):
        assert col in usage[1], col
    assert all(float(r["support_threshold"]) > 0 for r in runtime if r["status"] == "ok" and r.get("support_size"))
    contention = _read(tmp_path / "contention.csv")
    assert {r["scenario"] for r in contention} == {"idle", "torch matmuls"}  # the smoke run's two
    assert {r["method"] for r in contention} == {"vq", "scq-relaxed", "scq-pgd", "scq-pgd-one-thread",
                                                   "reference-gemm"}
    assert all(float(r["slowdown"]) > 0 and float(r["spread"]) >= 1 for r in contention)
    ablation = _read(tmp_path / "ablation.csv")
    assert ablation[0]["config"] == "default" and len(ablation) >= 5
    assert {"fwdbwd_s", "vs_default", "rounds", "converged"} <= set(ablation[0])
    md = (tmp_path / "results.md").read_text()
    assert "Runtime" in md and "Codebook usage" in md and "pgd" in md and "Contention" in md
    assert "Smoke run (--quick)" in md and "Load average before/after" in md


def test_cli_rejects_unknown_part():
    with pytest.raises(SystemExit):
        main(["bench", "speed"])


def test_version_and_help_text(capsys):
    import scq

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"scq {scq.__version__}"
    from scq.cli import _parser

    bench = _parser()._subparsers._group_actions[0].choices["bench"]
    for action in bench._actions:
        assert action.help, f"bench argument {action.dest} has no help text"


def test_load_warnings_flag_a_busy_machine_and_noisy_timings():
    import os

    from scq.bench.common import SPREAD_LIMIT, load_warnings

    cores = os.cpu_count()
    assert load_warnings("runtime", 0.1, 0.2, [{"method": "vq", "N": 8, "spread": 1.1}]) == []
    warnings = load_warnings("runtime", cores + 1.0, 0.2, [{"method": "scq-pgd", "N": 512, "spread": SPREAD_LIMIT + 1}])
    assert len(warnings) == 2
    assert "load average" in warnings[0] and f"on {cores} cores" in warnings[0]
    assert "scq-pgd N=512" in warnings[1]


def test_spread_is_robust_to_one_stray_call_among_many():
    from scq.bench.common import spread

    assert spread([1.0, 2.0, 1.5]) == 2.0  # few timings: slowest over fastest
    assert spread([1.0] * 19 + [6.0]) == 1.0  # many: one stray call does not flag the median
    assert spread([1.0] * 10 + [2.0] * 10) == 2.0  # a real split still does
    assert spread([]) != spread([])  # nan


def test_runtime_sweeps_cover_every_codebook_and_report_the_worst_ratio(tmp_path):
    # The full run sweeps N, K and D on every codebook kind (cases only: nothing is timed), and
    # the worst ratio to VQ of each method and kind is picked from the sweeps' rows.
    from scq.bench import plots, runtime
    from scq.bench.common import CODEBOOKS

    full = runtime.cases(quick=False)
    for sweep in ("N", "K", "D"):
        points = {kind: sorted((c.N, c.K, c.D) for c in full if c.sweep == sweep and c.codebook == kind)
                  for kind in CODEBOOKS}
        assert len(points["data_like"]) >= 3 and all(p == points["data_like"] for p in points.values()), sweep

    # On CUDA: a GPU's sweeps, issue #12's sizes, on every kind too.
    gpu = runtime.cases(quick=False, device="cuda")
    for kind in CODEBOOKS:
        mine = {(c.sweep, c.N, c.K, c.D) for c in gpu if c.codebook == kind}
        assert {("N", 16384, 1024, 64), ("N", 65536, 1024, 64), ("N", 262144, 1024, 64),
                ("K", 16384, 16384, 64)} <= mine, kind
    assert all(c.N * c.K <= 262144 * 1024 for c in gpu)  # dense (N, K) outputs of at most 1 GiB in fp32
    # the bounds come first, on every kind, so that a run cut short has them
    first = [(c.N, c.K, c.D, c.codebook) for c in gpu[:5 * len(CODEBOOKS)]]  # (the centre on 3 sweeps)
    assert {(n, k, 64, kind) for n, k in ((16384, 1024), (65536, 1024), (16384, 16384))
            for kind in CODEBOOKS} <= set(first), first
    assert runtime.cases(quick=True, device="cuda") == runtime.cases(quick=True)

    def row(sweep, kind, method, N, ratio):
        return dict(sweep=sweep, codebook=kind, method=method, N=N, K=64, D=8, status="ok", fwdbwd_vs_vq=ratio,
                    fwdbwd_s=ratio * 1e-3)

    rows = [row("N", "random", "scq-pgd", 256, 4.0), row("N", "random", "scq-pgd", 1024, 9.5),
            row("K", "random", "scq-pgd", 1024, 7.0), row("N", "data_like", "scq-pgd", 256, 3.0),
            row("peers", "random", "scq-pgd", 16, 50.0), row("N", "random", "vq", 256, 1.0)]
    worst = runtime.worst_ratios(rows)
    assert [(w["codebook"], w["worst_fwdbwd_vs_vq"]) for w in worst] == [("data_like", 3.0), ("random", 9.5)]
    assert worst[1]["at"] == "N sweep: N=1024 K=64 D=8"  # the peers' 50× is not a sweep point
    plots.runtime_sweeps(rows, tmp_path / "sweeps.png")  # one row of panels per codebook
    assert (tmp_path / "sweeps.png").stat().st_size > 0


def test_the_runtime_reference_without_cvxpy_is_the_certified_float64_pgd(monkeypatch):
    # A GPU machine may lack cvxpy: the deviation is then measured against pgd in float64 on the
    # CPU, which agrees with cvxpy's polished answer, and says which reference it was.
    import sys

    from scq.bench import runtime
    from scq.bench.common import CODEBOOKS

    z, E = CODEBOOKS["near_inputs"](6, 40, 8, generator=torch.Generator().manual_seed(3))
    with_cvxpy, name = runtime.reference_weights(z, E)
    assert name == "cvxpy"
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy now raises ImportError
    without, name = runtime.reference_weights(z, E)
    assert name == "pgd float64 (certified)" and without.dtype == torch.float64
    assert float((without - with_cvxpy).abs().max()) < 1e-9


def test_the_runtime_part_leaves_its_rows_after_each_case(tmp_path, monkeypatch):
    # A run stopped by a time limit (a lent GPU's) keeps what it measured.
    from scq.bench import runtime

    seen = []
    # (the third point is the first's on another sweep, as a sweep's centre is: listed, not timed again)
    points = [runtime.Case("N", 16, 8, 4, ("vq", "scq-pgd")), runtime.Case("N", 32, 8, 4, ("vq", "scq-pgd")),
              runtime.Case("K", 16, 8, 4, ("vq", "scq-pgd"))]
    monkeypatch.setattr(runtime, "cases", lambda quick, device="cpu": points)
    real_write = runtime.write_csv
    monkeypatch.setattr(runtime, "write_csv", lambda path, rows: seen.append(len(rows)) or real_write(path, rows))
    built = []
    monkeypatch.setattr(runtime, "Contender", lambda *a, real=runtime.Contender: built.append(a) or real(*a))
    rows = runtime.run(quick=True, progress=False, checkpoint=tmp_path / "runtime.csv")
    assert seen == [2, 4, 6] and len(_read(tmp_path / "runtime.csv")) == len(rows) == 6
    assert len(built) == 4  # two methods at two points
    assert [dict(r, sweep="N") for r in rows[4:]] == rows[:2] and {r["sweep"] for r in rows[4:]} == {"K"}
    pgd = [r for r in rows if r["method"] == "scq-pgd"]
    assert all(r["converged"] is True and r["reference"] == "cvxpy" and r["max_dev"] < 1e-5 for r in pgd)
