"""`mtdistill score DIR --csv OUT`: batch sync scoring of a folder of videos."""

from __future__ import annotations

import argparse

HELP = "sync-score every video under DIR into a CSV (one row per face track; parallel, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with videos (searched recursively)")
    parser.add_argument("--csv", required=True, help="output CSV; rows already in it are skipped (resume)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    from mtdistill.commands.sync import add_model_arguments

    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from mtdistill.inference.score import ModelSpec, format_table, score_folder, summary_path
    from mtdistill.inference.significance import check_alpha
    from mtdistill.inference.standards import check_standards

    if args.alpha is not None:
        check_alpha(args.alpha)

    spec = ModelSpec(
        checkpoint=args.checkpoint,
        preset=args.preset,
        onnx=args.onnx,
        kind=args.model_kind,
        stride=args.stride,
        vshift=args.vshift,
        min_confidence=args.min_confidence,
        detector=args.detector,
        detect_every=args.detect_every,
        rescan_every=args.rescan_every,
        bf16=args.bf16,
        alpha=args.alpha,
        standards=check_standards(args.standards),
        full_frame=args.full_frame,
    )
    summary = score_folder(args.folder, args.csv, spec, workers=args.workers, progress=sys.stderr.isatty())
    print(format_table(summary))
    print(f"rows: {args.csv}; aggregates: {summary_path(args.csv)}")
    return 0
