"""`scq compile`: the CPU kernels compiled into Numba's cache ahead of first use, a process per
dtype variant (scq/precompile.py)."""

import pytest
import torch

from scq import precompile
from scq.cli import main
from scq.solvers.engine import cpu_kernels, fused

pytestmark = pytest.mark.skipif(not fused.cpu_available(), reason="needs numba")


def _launchers():
    """The compiled entry points the solvers call from Python: the parallel launchers."""
    return sorted(name for name, f in vars(cpu_kernels).items() if isinstance(f, cpu_kernels.InParallel))


def _array_dtypes(args) -> tuple:
    return tuple(str(a.dtype) for a in args if hasattr(a, "dtype") and getattr(a, "ndim", 0) > 0 and a.size > 0)


def test_each_variant_reaches_every_launcher_in_its_dtypes(monkeypatch):
    # What warm() runs decides what `scq compile` leaves compiled: every launcher must be called by
    # some variant, and each variant's calls must see its dtypes (float32 and float64 systems for
    # float32 inputs: the "precise" variant is the one that compiles the mixed kernels).
    calls, launchers = {}, _launchers()
    for name in launchers:
        kernel = getattr(cpu_kernels, name)

        def spy(*args, _name=name, _kernel=kernel):
            calls.setdefault(_name, set()).add((variant, _array_dtypes(args)))
            return _kernel(*args)

        monkeypatch.setattr(cpu_kernels, name, spy)
    for variant in precompile.VARIANTS:
        precompile.warm(variant)
    assert sorted(calls) == launchers
    # The rounds' launchers take the systems' E first, then the inputs' (E_sys, E_out): each of the
    # three pairs, on both ways of getting the products, from its own variant.
    for launcher in ("round_par", "table_rounds_par"):
        pairs = {(variant, dtypes[:2]) for variant, dtypes in calls[launcher]}
        assert pairs == {("float32", ("float32", "float32")), ("float32-precise", ("float64", "float32")),
                         ("float64", ("float64", "float64"))}, (launcher, pairs)


def test_scq_compile_runs_every_variant_in_its_own_process(capsys):
    # (The kernels are cached by the time this runs, or the variants' processes compile them.)
    assert main(["compile"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compiled: ") and all(f"{name} " in out for name in precompile.VARIANTS), out
    seconds = precompile.compile_kernels(["float64", "float64"], jobs=1, progress=False)
    assert list(seconds) == ["float64"] and seconds["float64"] > 0


def test_a_variant_that_fails_raises_with_its_output(monkeypatch):
    # The parent's list admits a name the child's warm() refuses: its process exits 1.
    monkeypatch.setattr(precompile, "VARIANTS", precompile.VARIANTS + ("float8",))
    with pytest.raises(RuntimeError, match=r"(?s)the float8 variant failed \(exit 1\).*variant must be one of"):
        precompile.compile_kernels(["float8"], progress=False)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="variants must be names from"):
        precompile.compile_kernels(["float16"], progress=False)
    with pytest.raises(ValueError, match="jobs must be a positive int, got 0"):
        precompile.compile_kernels(jobs=0, progress=False)
    with pytest.raises(ValueError, match="variant must be one of"):
        precompile.warm("bfloat16")
    with pytest.raises(SystemExit):
        main(["compile", "float16"])
    assert main(["compile", "--jobs", "0"]) == 2


def test_warm_leaves_the_callers_settings_as_they_were():
    # warm() silences the tiny λ's warnings for its own solves only.
    import warnings

    filters, threads = list(warnings.filters), torch.get_num_threads()
    precompile.warm("float64")
    assert warnings.filters == filters
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()


def test_every_compile_argument_has_help_text():
    from scq.cli import _parser

    command = _parser()._subparsers._group_actions[0].choices["compile"]
    for action in command._actions:
        assert action.help, f"compile argument {action.dest} has no help text"


def test_without_numba_there_is_nothing_to_compile(monkeypatch, capsys):
    monkeypatch.setattr(fused, "cpu_available", lambda: False)
    assert precompile.compile_kernels(progress=False) == {}
    assert main(["compile"]) == 0
    assert "numba is not installed here" in capsys.readouterr().out
