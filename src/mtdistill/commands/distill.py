"""``mtdistill distill CONFIG``: distil a student from a frozen teacher with a recipe (MTD, KD, RKD, ...)."""

from __future__ import annotations

import argparse

from mtdistill.commands.train import add_recipe_arguments, run_kind

HELP = "distil a student from a frozen teacher with a YAML recipe (e.g. configs/mtd_uw25.yaml)"
KIND = "distill"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_kind(args, KIND)
