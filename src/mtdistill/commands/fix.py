"""`mtdistill fix VIDEO -o OUT`: write a copy whose audio is shifted into sync."""

from __future__ import annotations

import argparse
import json

HELP = "write a copy of VIDEO with the audio shifted by N frames (or by the estimated offset) so it is in sync"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="input video file")
    parser.add_argument("-o", "--output", required=True, help="output file (.mp4, .mkv, .mov, ...)")
    parser.add_argument(
        "--offset",
        default="auto",
        help="offset of the input in frames (positive = audio leads video, as `mtdistill sync` reports); "
        "'auto' (default) runs sync and uses its estimate",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate the offset counts in (default: the video's own; 'auto' uses 25)",
    )
    parser.add_argument("--audio-codec", default=None, help="audio encoder (default aac; e.g. alac for lossless)")
    parser.add_argument("--force", action="store_true", help="with --offset auto: apply even an undetermined verdict")
    from mtdistill.commands.sync import add_model_arguments

    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mtdistill.core.errors import UserError
    from mtdistill.inference.fix import fix_video

    fps = args.fps
    if str(args.offset).lower() == "auto":
        from mtdistill.commands.sync import sync_from_args

        result = sync_from_args(args, args.video)
        track = result.main_track()
        if track is None:
            raise UserError(f"{args.video}: no face track could be scored; pass --offset N")
        if track.verdict == "undetermined" and not args.force:
            raise UserError(
                f"{args.video}: the offset is undetermined (confidence {track.confidence:.2f}); "
                "pass --offset N, or --force to apply the estimate anyway"
            )
        offset, fps = track.offset_frames, fps or result.fps
    else:
        try:
            offset = int(args.offset)
        except ValueError:
            raise UserError(f"--offset must be an integer number of frames or 'auto', got {args.offset!r}") from None
    result = fix_video(args.video, args.output, offset, audio_codec=args.audio_codec, fps=fps)
    print(json.dumps(result.to_json()))
    return 0
