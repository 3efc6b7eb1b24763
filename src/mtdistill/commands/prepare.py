"""`mtdistill prepare SRC OUT`: videos / LRS2 layouts -> packed, sharded store (resumable)."""

from __future__ import annotations

import argparse
import json
import os

from mtdistill.media import DEFAULT_DETECTOR

HELP = "pack LRS2 (raw or Wav2Lip-preprocessed) or any video folder into a sharded store (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="SRC",
        help="LRS2 root (main/, pretrain/), Wav2Lip-preprocessed root, "
        "a `mtdistill synth` corpus, or any folder of videos",
    )
    parser.add_argument("out", metavar="OUT", help="store folder (created; rerun the same command to resume)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="parallel processes (default: CPU count, at most 4)",
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        help=f"face detector for videos: {DEFAULT_DETECTOR} (default), haar, mtcnn, or package.module:Class",
    )
    parser.add_argument(
        "--detect-every",
        type=int,
        default=1,
        metavar="N",
        help="run the detector on every N-th frame and interpolate the track between (default 1: every frame, "
        "as Wav2Lip's preprocessing; 5 is about 5x faster on long videos)",
    )
    parser.add_argument(
        "--split-lists",
        metavar="DIR",
        default=None,
        help="folder with pretrain/train/val/test.txt (default: SRC/filelists or SRC)",
    )
    parser.add_argument(
        "--split",
        default=None,
        choices=("pretrain", "train", "val", "test"),
        help="put every input in this split (ignores lists)",
    )
    parser.add_argument(
        "--layout",
        default=None,
        choices=("lrs2", "wav2lip", "videos"),
        help="force the input layout (default: detected)",
    )
    parser.add_argument("--shard-size", type=int, default=64, help="utterances per shard (default 64)")
    parser.add_argument(
        "--compression",
        choices=("none", "lzf", "gzip"),
        default="none",
        help="none (default): contiguous frames, memory-mapped reads (fastest loader); "
        "lzf / gzip: chunked and compressed (smaller files, slower reads)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    from mtdistill.engines import add_engine_arguments

    add_engine_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mtdistill.core.errors import UserError
    from mtdistill.data.prepare import prepare, summary_table
    from mtdistill.engines import engine_from_args
    from mtdistill.media.detectors import check_detector

    if args.workers < 1 or args.shard_size < 1 or args.detect_every < 1:
        raise UserError("--workers, --shard-size and --detect-every must be >= 1")
    check_detector(args.detector)
    engine, workers, run_shards = engine_from_args(args), args.workers, None
    if engine.is_ray:
        from mtdistill.data.prepare_ray import ray_runner
        from mtdistill.engines.ray_engine import connect, task_slots

        connect(engine)  # a bad --ray-address is one line, before any work
        workers, run_shards = task_slots(engine), ray_runner(engine)  # shards sized by the cluster's task slots
    summary = prepare(
        args.src,
        args.out,
        workers=workers,
        detector=args.detector,
        detect_every=args.detect_every,
        split_lists=args.split_lists,
        split=args.split,
        layout=args.layout,
        shard_size=args.shard_size,
        compression=None if args.compression == "none" else args.compression,
        progress=not args.quiet,
        run_shards=run_shards,
    )
    print(json.dumps(summary) if args.json else summary_table(summary))
    return 0 if summary["stored"] else 1
