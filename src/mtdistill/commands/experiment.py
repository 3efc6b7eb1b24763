"""`mtdistill experiment CONFIG`: a grid of recipes trained, evaluated and reported; resumable."""

from __future__ import annotations

import argparse

HELP = "run a grid of recipes (train/distill, evaluate, report), skipping finished cells; e.g. table1_demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="grid YAML (configs/experiments/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")
    parser.add_argument("--device", default="auto", help="device for evaluation (default: cuda when available)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")


def run(args: argparse.Namespace) -> int:
    from mtdistill.workflows.experiment import run_experiment

    statuses = run_experiment(args.config, dry_run=args.dry_run, device=args.device, report=not args.no_report)
    for s in statuses:
        if "report" in s:
            print(f"report: {s['report']}")
        else:
            print(f"{s['state']:8s} {s['run']}  ({s['recipe']})")
    return 0
