"""`scq bench` end to end into a temporary folder: files, columns and rows (not the numbers)."""

import csv

import pytest

from scq.cli import main


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_quick_exactness_writes_to_the_default_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "exactness", "--quick"]) == 0
    assert "results written to scq-bench-results/" in capsys.readouterr().out
    tmp_path = tmp_path / "scq-bench-results"
    rows = _read(tmp_path / "exactness.csv")
    methods = {r["method"] for r in rows}
    assert methods == {"exact", "relaxed", "pgd", "vq"}
    for col in ("machine", "torch", "dtype", "device", "threads", "K", "D", "lam", "max_dev", "rel_obj_gap",
                "grad_dev", "seconds", "perplexity", "usage", "support_size"):
        assert col in rows[0], col
    assert {float(r["lam"]) for r in rows} == {0.01, 0.1, 1.0, 10.0}
    assert (tmp_path / "exactness_vs_lambda.png").stat().st_size > 1000
    md = (tmp_path / "results.md").read_text()
    assert "| method" in md


@pytest.mark.slow
def test_bench_quick_all_parts(tmp_path):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("exactness.csv", "exactness_lasso.csv", "runtime.csv", "ablation.csv", "usage.csv", "results.md",
                 "exactness_vs_lambda.png",
                 "runtime_sweeps.png", "usage_training_curves.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    runtime = _read(tmp_path / "runtime.csv")
    assert {"vq", "vector-quantize-pytorch", "scq-relaxed", "scq-pgd", "scq-exact", "svq-mlp", "svq-lasso"} <= {
        r["method"] for r in runtime}
    for col in ("machine", "torch", "dtype", "device", "threads", "sweep", "N", "K", "D", "fwd_s", "fwdbwd_s",
                "fwdbwd_vs_vq", "peak_mb", "max_dev", "status"):
        assert col in runtime[0], col
    assert {r["sweep"] for r in runtime} == {"N", "K", "D", "peers", "svq"}
    usage = _read(tmp_path / "usage.csv")
    assert {r["quantizer"] for r in usage} == {"none", "vq", "vq-strong", "vqp-strong", "scq-relaxed",
                                               "scq-relaxed-strong", "scq-pgd", "scq-pgd-strong", "svq-mlp"}
    assert {r["dataset"] for r in usage} == {"photos", "digits"}
    for col in ("test_mse", "perplexity", "usage_pct", "dead_codes", "support_size", "step_s", "seed"):
        assert col in usage[1], col
    ablation = _read(tmp_path / "ablation.csv")
    assert ablation[0]["config"] == "default" and len(ablation) >= 5
    assert {"fwdbwd_s", "vs_default", "rounds", "converged"} <= set(ablation[0])
    md = (tmp_path / "results.md").read_text()
    assert "Runtime" in md and "Codebook usage" in md and "pgd" in md


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
