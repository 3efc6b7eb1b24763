"""`mtdistill fix VIDEO -o OUT`: write a copy whose audio is shifted into sync."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "write a copy of VIDEO with the audio shifted by N frames of 40 ms (or by the estimated offset) so it is in sync"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="input video file")
    parser.add_argument("-o", "--output", required=True, help="output file (.mp4, .mkv, .mov, ...)")
    parser.add_argument(
        "--offset",
        default=None,
        help="offset of the input in 25 fps analysis frames of 40 ms, the unit `mtdistill sync` reports, whatever "
        "the video's own frame rate (positive = audio leads video; 3 = 120 ms); 'auto' (the default) runs sync and "
        "uses its estimate",
    )
    parser.add_argument(
        "--offset-ms",
        type=float,
        default=None,
        help="offset of the input in milliseconds, exactly (positive = audio leads video); instead of --offset",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate --offset counts in (default 25, the analysis rate of `sync`; e.g. 30 to count the frames "
        "of a 30 fps video)",
    )
    parser.add_argument("--audio-codec", default=None, help="audio encoder (default aac; e.g. alac for lossless)")
    parser.add_argument("--force", action="store_true", help="with --offset auto: apply even an undetermined verdict")
    from mtdistill.commands.sync import add_model_arguments

    add_model_arguments(parser)


def _explicit_offset(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(offset in frames, offset in ms) given on the command line; (None, None) for auto."""
    from mtdistill.core.errors import UserError

    auto = args.offset is None or str(args.offset).strip().lower() == "auto"
    if args.offset_ms is not None:
        if not auto:
            raise UserError("give --offset (frames of 40 ms) or --offset-ms (milliseconds), not both")
        if args.fps is not None:
            raise UserError("--fps sets the unit of --offset; it does not apply to --offset-ms")
        return None, args.offset_ms
    if auto:
        return None, None
    try:
        return int(args.offset), None
    except ValueError:
        raise UserError(f"--offset must be an integer number of frames or 'auto', got {args.offset!r}") from None


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from mtdistill.commands.sync import check_model_arguments
    from mtdistill.core.errors import UserError
    from mtdistill.core.timing import ANALYSIS_FPS
    from mtdistill.inference.fix import check_fix_output, fix_video

    if not Path(args.video).is_file():
        raise UserError(f"video {args.video} not found; give the path of a video file")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps must be a positive number of frames per second (e.g. 25), got {args.fps}")
    offset, offset_ms = _explicit_offset(args)
    if offset_ms is not None and not math.isfinite(offset_ms):
        raise UserError(f"--offset-ms must be a finite number of milliseconds, got {args.offset_ms}")
    check_model_arguments(args)
    check_fix_output(args.video, args.output, args.audio_codec)
    fps = args.fps or ANALYSIS_FPS
    if offset is None and offset_ms is None:
        from mtdistill.commands.sync import sync_from_args

        result = sync_from_args(args, args.video)
        if result.warnings:
            raise UserError(
                f"{args.video}: the file is damaged ({result.warnings[0]}); fix copies the video as it is, so "
                "repair or re-export it first"
            )
        track = result.main_track()
        if track is None:
            raise UserError(f"{args.video}: no face track could be scored; pass --offset N")
        if track.verdict == "undetermined" and not args.force:
            raise UserError(
                f"{args.video}: the offset is undetermined (confidence {track.confidence:.2f}); "
                "pass --offset N, or --force to apply the estimate anyway"
            )
        offset, fps = track.offset_frames, result.fps
        print(f"sync: offset {offset:+d} frames ({track.offset_ms:+.0f} ms)", file=sys.stderr)
    result = fix_video(args.video, args.output, offset or 0, audio_codec=args.audio_codec, fps=fps, offset_ms=offset_ms)
    print(json.dumps(result.to_json()))
    return 0
