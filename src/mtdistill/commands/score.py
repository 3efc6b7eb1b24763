"""`mtdistill score DIR --csv OUT`: batch sync scoring of a folder of videos."""

from __future__ import annotations

import argparse

HELP = "sync-score every video under DIR into a CSV (one row per face track; parallel, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with videos (searched recursively)")
    parser.add_argument(
        "--csv",
        required=True,
        help="output CSV: a new file, or the CSV of an earlier score run, whose videos are skipped (resume); "
        "any other existing file is refused and left untouched",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes, >= 1 (default 1)")
    from mtdistill.commands.sync import add_model_arguments

    add_model_arguments(parser)
    from mtdistill.engines import add_engine_arguments

    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from mtdistill.commands.sync import check_model_arguments
    from mtdistill.engines import engine_from_args
    from mtdistill.inference.score import ModelSpec, format_table, score_folder, summary_path
    from mtdistill.inference.significance import check_alpha
    from mtdistill.inference.standards import check_standards
    from mtdistill.media.detectors import check_detector

    if args.alpha is not None:
        check_alpha(args.alpha)

    check_detector(args.detector)

    check_model_arguments(args)
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
        device=args.device,
        alpha=args.alpha,
        standards=check_standards(args.standards),
        full_frame=args.full_frame,
    )
    engine = engine_from_args(args)
    run_videos = None
    if engine.is_ray:
        from mtdistill.engines.ray_engine import connect
        from mtdistill.inference.score_ray import ray_runner

        connect(engine)  # a bad --ray-address is one line, before the model loads
        run_videos = ray_runner(engine)
    summary = score_folder(
        args.folder, args.csv, spec, workers=args.workers, progress=sys.stderr.isatty(), run_videos=run_videos
    )
    print(format_table(summary))
    print(f"rows: {args.csv}; aggregates: {summary_path(args.csv)}")
    return 0
