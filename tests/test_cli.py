"""`scq bench` end to end into a temporary folder: files, columns and rows (not the numbers)."""

import csv

import pytest

from scq.cli import main


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_bench_quick_exactness(tmp_path, capsys):
    assert main(["bench", "exactness", "--quick", "--out", str(tmp_path)]) == 0
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
    assert "Exactness" in capsys.readouterr().out


def test_cli_rejects_unknown_part():
    with pytest.raises(SystemExit):
        main(["bench", "speed"])
