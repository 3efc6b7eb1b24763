"""``mtdistill train CONFIG``: train VocaLiST (or any model of the family) from scratch with a recipe."""

from __future__ import annotations

import argparse
import json

HELP = "train a model from scratch with a YAML recipe (e.g. configs/vocalist_lrs2.yaml)"
KIND = "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by `train` and `distill`."""
    parser.add_argument("config", metavar="CONFIG", help="YAML recipe (configs/*.yaml); may use 'base: other.yaml'")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set trainer.epochs=3 --set data.store=demo_out/store (repeatable)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CKPT",
        help="resume from runs/<name>/checkpoints/last.ckpt (the default when it exists) or from CKPT",
    )
    group.add_argument("--no-resume", dest="resume", action="store_false", help="fail instead of resuming a run")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")


def run_kind(args: argparse.Namespace, kind: str) -> int:
    from mtdistill.training.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from mtdistill.training.run import run_recipe

    summary = run_recipe(cfg, expect_kind=kind, resume=args.resume)
    print(json.dumps(summary))
    return 0


def run(args: argparse.Namespace) -> int:
    return run_kind(args, KIND)
