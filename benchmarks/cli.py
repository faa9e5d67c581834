"""`ckm-bench`: run a benchmark, store its JSON and regenerate benchmarks/RESULTS.md.

    ckm-bench procedural [--tiles 1000] [--workers N]
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import report


def _cmd_procedural(args: argparse.Namespace) -> int:
    from benchmarks import procedural

    results, markdown = procedural.run(tiles=args.tiles, workers=args.workers)
    command = f"ckm-bench procedural --tiles {args.tiles}" + (f" --workers {args.workers}" if args.workers else "")
    path = report.write_result("procedural-generator", command, results, markdown)
    print(markdown)
    print(f"results: {path}; report: {report.RESULTS_MD}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckm-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    proc = sub.add_parser("procedural", help="procedural tile generation throughput")
    proc.add_argument("--tiles", type=int, default=1000)
    proc.add_argument("--workers", type=int, default=None, help="processes (default: usable cores)")
    proc.set_defaults(func=_cmd_procedural)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
