"""`mtdistill sync VIDEO`: audio-visual offset, confidence and verdict per face track."""

from __future__ import annotations

import argparse
import sys

from mtdistill.core.errors import UserError
from mtdistill.media import DEFAULT_DETECTOR

HELP = "estimate the audio-visual offset of a video per face track (offset, confidence, verdict; --json, --plot)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose and run the scoring model (shared by sync, score and fix --offset auto)."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        default=None,
        help="VocaLiST / MTDVocaLiST checkpoint (ours or official), or syncnet_v2.model with --model syncnet",
    )
    g.add_argument(
        "--preset",
        choices=("vocalist", "mtd"),
        default=None,
        help="input preset; required for official files (vocalist_5f_lrs2.pth: vocalist, pure_MTDVocaLiST.pth: mtd)",
    )
    g.add_argument(
        "--model",
        dest="model_kind",
        choices=("vocalist", "syncnet"),
        default="vocalist",
        help="scoring model family (default vocalist; syncnet gives LSE-C / LSE-D)",
    )
    g.add_argument("--onnx", default=None, help="run an exported model.onnx with onnxruntime instead")
    g.add_argument("--stride", type=int, default=1, help="score every N-th 5-frame window (1 or 5; default 1)")
    g.add_argument("--vshift", type=int, default=15, help="search offsets -V..+V frames (default 15)")
    g.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="decide verdicts by the v1 margin rule instead: confidence below this is undetermined (docs/sync.md)",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="p_value at or below which a verdict is confident (default 0.01; between 0 and 1, docs/sync.md)",
    )
    g.add_argument(
        "--standard",
        dest="standards",
        action="append",
        default=None,
        metavar="NAME",
        help="judge each track and segment against a tolerance (repeatable): itu-bt1359-detect, itu-bt1359-accept, "
        "ebu-r37, atsc-is191, frame; positive = sound ahead of picture",
    )
    g.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        help=f"face detector: {DEFAULT_DETECTOR} (default), haar, mtcnn, or package.module:Class",
    )
    g.add_argument(
        "--full-frame",
        dest="full_frame",
        action="store_const",
        const=True,
        default=None,
        help="score the whole frame as the face, no detection (videos that are one aligned face crop; default: "
        "automatic, decided on the first 2 s)",
    )
    g.add_argument(
        "--no-full-frame",
        dest="full_frame",
        action="store_const",
        const=False,
        help="always detect faces, even in a video that looks like one face crop",
    )
    g.add_argument(
        "--detect-every",
        type=int,
        default=None,
        help="run the face detector on every N-th frame (default: min(stride, 5)); boxes in between are interpolated",
    )
    g.add_argument(
        "--rescan-every",
        type=int,
        default=25,
        help="scan whole frames at least every N frames; in between, search only near the faces already found "
        "(default 25; 0 scans every detection frame whole, see docs/media.md)",
    )
    g.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:N, mps or auto")
    g.add_argument(
        "--bf16",
        action="store_true",
        help="run the model in bfloat16 autocast: ~2x faster front ends on CPUs with AVX512-BF16 / AMX and on GPUs "
        "(offsets unchanged on the synthetic checks, logits differ ~1e-2; see docs/sync.md)",
    )


def check_model_arguments(args: argparse.Namespace) -> None:
    """Refuse bad model options before any work (shared by sync, score and fix): one line, exit 2.

    Checks the values (--stride, --vshift, --min-confidence, --detect-every, --rescan-every), resolves
    --device (unknown names, absent hardware) in place, and checks that --detector names a detector class
    without building it.
    """
    from mtdistill.core.devices import pick_device
    from mtdistill.inference.sync import check_model_options
    from mtdistill.media.detectors import detector_class

    check_model_options(args.stride, args.vshift, args.min_confidence, args.detect_every, args.rescan_every)
    if args.device is not None:
        args.device = pick_device(args.device)
    detector_class(args.detector)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="video file (any container / codec / frame rate)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--plot", default=None, help="write a PNG of the score curve and per-window offsets (path checked first)"
    )
    add_model_arguments(parser)


def sync_from_args(args: argparse.Namespace, video: str, progress: bool = True):
    """Load the model named by the options and run sync_video on ``video``."""
    from mtdistill.inference.sync import load_model, sync_video
    from mtdistill.media.detectors import check_detector

    check_detector(args.detector)  # before loading the model or decoding anything
    model = load_model(args.checkpoint, args.preset, args.onnx, args.model_kind)
    return sync_video(
        video,
        model,
        preset=args.preset,
        stride=args.stride,
        vshift=args.vshift,
        min_confidence=args.min_confidence,
        detector=args.detector,
        device=args.device,
        progress=progress and sys.stderr.isatty(),
        detect_every=args.detect_every,
        rescan_every=args.rescan_every,
        bf16=args.bf16,
        alpha=args.alpha,
        standards=args.standards,
        full_frame=args.full_frame,
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mtdistill.core.outputs import check_output_file
    from mtdistill.inference.readout import VerdictRule, format_tracks

    if not Path(args.video).is_file():  # say so before asking for a checkpoint
        raise UserError(f"video {args.video} not found; give the path of a video file")
    check_model_arguments(args)
    if args.plot:
        check_output_file(args.plot, "--plot")
    VerdictRule.make(args.alpha, args.min_confidence, args.standards)  # bad values: one line before any work
    result = sync_from_args(args, args.video)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.plot:
        from mtdistill.inference.plot import plot_sync

        plot_sync(result, args.plot)
    if args.json:
        print(result.to_json())
        return 0
    print(f"{result.video}: {result.duration_s:.2f} s, model {result.model}, stride {result.stride}")
    print(format_tracks(result))
    return 0
