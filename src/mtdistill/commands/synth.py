"""`mtdistill synth OUT`: a synthetic talking-mouth corpus as real .mp4 files (LRS2 layout + ground truth)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mtdistill.core.errors import UserError
from mtdistill.core.outputs import check_output_folder

HELP = "write a synthetic talking-face corpus (H.264 + AAC .mp4, LRS2 layout, filelists, known offsets)"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use WxH, e.g. 160x160") from None
    return w, h


def _duration(text: str) -> tuple[float, float]:
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}; use seconds (3) or a range (2:4)") from None
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (created; an interrupted run resumes)")
    parser.add_argument("--n-speakers", type=int, default=4, help="number of speakers (default 4)")
    parser.add_argument("--n-utterances", type=int, default=10, help="utterances per speaker (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> same files (default 0)")
    parser.add_argument(
        "--duration", type=_duration, default=(3.0, 3.0), help="seconds per utterance, or a range MIN:MAX (default 3)"
    )
    parser.add_argument(
        "--offsets",
        default="0",
        help="known audio offsets in frames (positive = audio leads): a list like -5,0,3 "
        "(one drawn per utterance) or an inclusive range like -15:15 (default 0)",
    )
    parser.add_argument(
        "--offset-splits",
        default="pretrain,train,val,test",
        help="splits that get offsets; others stay in sync (default: all)",
    )
    parser.add_argument(
        "--splits", default=None, help="split fractions, default pretrain=0.6,train=0.1,val=0.1,test=0.2"
    )
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    parser.add_argument("--size", type=_size, default=(160, 160), help="frame size WxH (default 160x160)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="parallel processes (default: CPU count, at most 4)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mtdistill.data.synthetic import SPLITS, synth_corpus

    offset_splits = [s.strip() for s in args.offset_splits.split(",") if s.strip()]
    if set(offset_splits) - set(SPLITS):
        raise UserError(f"bad --offset-splits {args.offset_splits!r}; use names among {', '.join(SPLITS)}")
    if args.size[0] % 2 or args.size[1] % 2 or min(args.size) < 64:
        raise UserError(f"bad --size {args.size[0]}x{args.size[1]}; use even sizes of at least 64x64")
    if args.duration[0] < 0.5 or args.duration[1] < args.duration[0]:
        raise UserError(f"bad --duration {args.duration}; use at least 0.5 s (and MIN <= MAX)")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    check_output_folder(args.out, "OUT")
    plans = synth_corpus(
        args.out,
        n_speakers=args.n_speakers,
        n_utterances=args.n_utterances,
        seed=args.seed,
        duration=args.duration,
        offsets=args.offsets,
        offset_splits=offset_splits,
        splits=args.splits,
        fps=args.fps,
        size=args.size,
        workers=args.workers,
        progress=not args.quiet,
    )
    counts = {s: sum(p.split == s for p in plans) for s in SPLITS}
    print(
        json.dumps(
            {
                "out": args.out,
                "utterances": len(plans),
                "splits": counts,
                "ground_truth": os.path.join(args.out, "ground_truth.csv"),
            }
        )
    )
    print(f"next: mtdistill prepare {args.out} STORE", file=sys.stderr)
    return 0
