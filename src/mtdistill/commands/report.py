"""`mtdistill report RUNS...`: Table 1, Table 2 and Fig. 2-4 of the paper from run folders."""

from __future__ import annotations

import argparse
import sys

HELP = "the paper's Table 1, Table 2 and Fig. 2-4 from run folders (Markdown, CSV, JSON, PNG), beside its numbers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUNS", help="run folders, or folders that hold run folders")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")


def run(args: argparse.Namespace) -> int:
    from mtdistill.evaluation.report import build_report

    result = build_report(args.runs, args.out)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{len(result['runs'])} run(s) -> {args.out}/report.md ({len(result['files'])} files)")
    return 0
