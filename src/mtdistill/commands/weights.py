"""`mtdistill weights`: download and verify the official MTDVocaLiST checkpoint."""

from __future__ import annotations

import argparse
import json

HELP = "download and verify the official MTDVocaLiST checkpoint (needs a network)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", default="weights", help="folder for the checkpoint (default: ./weights)")
    parser.add_argument("--url", default=None, help="download from this mirror instead of the GitHub release")
    parser.add_argument("--timeout", type=float, default=20.0, help="network timeout in seconds (default 20)")


def run(args: argparse.Namespace) -> int:
    from mtdistill.inference.weights import VOCALIST_TEACHER, fetch_official

    for info in fetch_official(args.dest, url=args.url, timeout=args.timeout):
        print(json.dumps(info))
    print(
        f"VocaLiST teacher: download {VOCALIST_TEACHER.filename} by hand from {VOCALIST_TEACHER.url} "
        "and use it with --preset vocalist"
    )
    return 0
