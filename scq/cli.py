"""The ``scq`` command. ``scq bench [exactness|runtime|contention|usage|all|study] [--quick] [--out DIR] [--device]
[--seed] [--workers]``; ``scq compile [VARIANT ...] [--jobs N]``."""

from __future__ import annotations

import argparse
import sys

DEFAULT_OUT = "scq-bench-results"


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="scq", description="Differentiable quantizers built on convex optimization.")
    parser.add_argument("--version", action="version", version=f"scq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run the benchmark suite (exactness, runtime, codebook usage)")
    bench.add_argument("part", nargs="?", default="all",
                       choices=["exactness", "runtime", "contention", "usage", "all", "study"],
                       help="which part to run: exactness against a cvxpy reference, runtime side by side with VQ "
                            "and vector-quantize-pytorch, contention (slowdown beside busy processes, CPU only), "
                            "codebook usage in a trained autoencoder, all of these (default), or the study "
                            "(rate-distortion at matched bits and forecasting, every contender trained over seeds; "
                            "about 20 minutes on 2 CPU cores, not part of 'all')")
    bench.add_argument("--quick", action="store_true",
                       help="a smoke run at small sizes (every part in about a minute on 2 CPU cores); its numbers "
                            "are not results")
    bench.add_argument("--out", default=DEFAULT_OUT,
                       help=f"folder for the CSV, markdown and PNG results (default: ./{DEFAULT_OUT})")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the solvers (default: cpu)")
    bench.add_argument("--seed", type=int, default=0, help="random seed of data and initializations (default: 0)")
    bench.add_argument("--workers", type=int, default=None,
                       help="study only: training runs at once, one thread each (default: the number of cores, "
                            "at most 4; 1 with --quick or --device cuda)")
    bench.add_argument("--scale", type=float, default=1.0,
                       help="study only: multiply the full study's training steps (default 1: 20 minutes "
                            "on 2 CPU cores; larger on a bigger machine or a GPU)")
    from .precompile import ABOUT, VARIANTS

    compile_ = sub.add_parser(
        "compile", help="compile the CPU kernels into Numba's on-disk cache ahead of their first use, the variants "
                        "in parallel processes (before several training processes start on a fresh machine, or "
                        "in an image's build)")
    # (argparse checks a "*" positional's default against its choices: "all" stands for them all)
    compile_.add_argument("variants", nargs="*", default="all", choices=[*VARIANTS, "all"], metavar="VARIANT",
                          help="which dtypes to compile for: " + "; ".join(f"{v}: {ABOUT[v]}" for v in VARIANTS)
                               + "; or all (default)")
    compile_.add_argument("--jobs", type=int, default=None,
                          help="processes at once (default: one per variant, all at once)")
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compile":
        from .precompile import VARIANTS, compile_kernels

        if args.jobs is not None and args.jobs < 1:
            print(f"--jobs must be at least 1, got {args.jobs}", file=sys.stderr)
            return 2
        chosen = [args.variants] if isinstance(args.variants, str) else args.variants
        seconds = compile_kernels(VARIANTS if "all" in chosen else chosen, jobs=args.jobs)
        if not seconds:
            print("numba is not installed here: nothing to compile (the solvers take their torch path)")
        else:
            print("compiled: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
        return 0
    if args.command == "bench":
        try:
            from scq.bench.suite import run
        except ImportError as err:  # pragma: no cover - depends on the install
            print(f"scq bench needs the benchmark extra: pip install 'scq[bench]' ({err})", file=sys.stderr)
            return 2
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                print("--device cuda: no CUDA device is available", file=sys.stderr)
                return 2
        if args.workers is not None and args.workers < 1:
            print(f"--workers must be at least 1, got {args.workers}", file=sys.stderr)
            return 2
        if not args.scale > 0:
            print(f"--scale must be positive, got {args.scale}", file=sys.stderr)
            return 2
        run(args.part, quick=args.quick, out=args.out, device=args.device, seed=args.seed, workers=args.workers,
            scale=args.scale)
        print(f"results written to {args.out}/ (CSV, markdown, PNG)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
