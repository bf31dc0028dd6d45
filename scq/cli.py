"""The ``scq`` command. ``scq bench [exactness|runtime|usage|all] [--quick] [--out DIR] [--device]``."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scq", description="Differentiable quantizers built on convex optimization.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run the benchmark suite (exactness, runtime, codebook usage)")
    bench.add_argument("part", nargs="?", default="all", choices=["exactness", "runtime", "usage", "all"])
    bench.add_argument("--quick", action="store_true", help="small sizes: every part in a few minutes on 2 CPU cores")
    bench.add_argument("--out", default=None, help="folder for CSV, markdown and PNG results")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
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
        run(args.part, quick=args.quick, out=args.out, device=args.device, seed=args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
