"""`mtdistill mult ...`: the MulT -> video-only system of seed paper 002 (synth, train, evaluate, report, demo)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtdistill.core.errors import UserError

HELP = "MulT teacher and video-only students (seed 002): synth | train | evaluate | report | demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mult_command", metavar="ACTION")
    p = sub.add_parser("synth", help="write a synthetic MOSEI-like set in MulT's pickle layout")
    p.add_argument("out", help="output folder (gets mosei_senti_data_noalign.pkl)")
    p.add_argument("--n-train", type=int, default=1600)
    p.add_argument("--n-valid", type=int, default=300)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--lengths", type=int, nargs=3, default=(50, 500, 500), metavar=("TEXT", "AUDIO", "VISION"))
    p.add_argument("--dims", type=int, nargs=3, default=(300, 74, 35), metavar=("TEXT", "AUDIO", "VISION"))
    p.add_argument("--video-trace", type=float, default=0.15, help="strength of text/audio traces in the video")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a teacher or a student from a recipe (configs/mult_*.yaml, ...)")
    p.add_argument("config", help="YAML recipe")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set trainer.epochs=3 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt")
    p.add_argument("--fresh", action="store_true", help="start over even if the run folder has checkpoints")

    p = sub.add_parser(
        "evaluate", help="metrics of a run's best model (RUN/eval/results.json) or of a MulT teacher file"
    )
    p.add_argument(
        "runs",
        nargs="+",
        help="run folders, or MulT teacher files: an official torch.save(model) pickle or state_dict, or ours",
    )
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--data", default=None, help="another pickle than the run's own (required with a file)")
    p.add_argument("--heads", type=int, default=None, help="attention heads of an official state_dict file")
    p.add_argument("--out", default=None, help="with a file: write results.json/md, per_sample.csv here")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")

    p = sub.add_parser("report", help="the seed paper's Table 1 from evaluated runs (Markdown, CSV, JSON)")
    p.add_argument("runs", nargs="+", help="run folders (evaluated or not: missing evaluations are run)")
    p.add_argument("-o", "--out", default="reports/mult", help="output folder")

    p = sub.add_parser("demo", help="CPU demo: synthetic data, teacher, student without KD, EDAM-S, CRD, Table 1")
    p.add_argument("out", nargs="?", default="runs/mult_demo", help="output folder (data, runs, report)")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    p.add_argument("--configs", default=None, help="folder holding the demo recipes (default: the repo's configs/)")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "mult_command", None)
    if action is None:
        raise UserError("mult needs an action: synth | train | evaluate | report | demo (see mtdistill mult -h)")
    return {"synth": _synth, "train": _train, "evaluate": _evaluate, "report": _report, "demo": _demo}[action](args)


def _synth(args: argparse.Namespace) -> int:
    from mtdistill.data.mult.synth import SynthMoseiConfig, write_synthetic_mosei

    cfg = SynthMoseiConfig(
        n_train=args.n_train,
        n_valid=args.n_valid,
        n_test=args.n_test,
        lengths=tuple(args.lengths),
        dims=tuple(args.dims),
        video_trace=args.video_trace,
        seed=args.seed,
    )
    path = write_synthetic_mosei(args.out, cfg)
    print(json.dumps({"pickle": str(path), "train": cfg.n_train, "valid": cfg.n_valid, "test": cfg.n_test}))
    return 0


def _train(args: argparse.Namespace) -> int:
    from mtdistill.training.mult import load_mult_config, train_mult

    if args.resume and args.fresh:
        raise UserError("--resume and --fresh contradict each other; pick one")
    cfg = load_mult_config(args.config, args.overrides)
    summary = train_mult(cfg, resume=True if args.resume else (False if args.fresh else None))
    print(json.dumps(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mtdistill.evaluation.mult.evaluate import evaluate_mult_checkpoint, evaluate_mult_run

    if args.heads is not None and args.heads < 1:
        raise UserError(f"--heads {args.heads}: must be at least 1")
    files = [p for p in args.runs if Path(p).is_file()]
    if files and args.data is None:
        raise UserError(f"{files[0]} is a checkpoint file; pass the MOSEI pickle to evaluate it on with --data")
    if args.out and len(files) > 1:
        raise UserError("--out takes one checkpoint file at a time")
    for src in args.runs:
        if Path(src).is_file():
            res = evaluate_mult_checkpoint(
                src, args.data, split=args.split, out=args.out, heads=args.heads, latency=not args.no_latency
            )
        else:
            res = evaluate_mult_run(src, split=args.split, pickle_path=args.data, latency=not args.no_latency)
        print(json.dumps({"run": str(src), **res["metrics"], "params": res["params"]}))
    return 0


def _report(args: argparse.Namespace) -> int:
    from mtdistill.evaluation.mult.report import render_mult_table

    paths = render_mult_table(args.runs, args.out)
    print(Path(paths["markdown"]).read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


DEMO_RECIPES = (
    "mult_demo_teacher.yaml",
    "mult_demo_student.yaml",
    "edam_s_demo.yaml",
    "crd_attention_demo.yaml",
    "crd_penultimate_demo.yaml",
)


def _demo(args: argparse.Namespace) -> int:
    from mtdistill.data.mult.synth import SynthMoseiConfig, write_synthetic_mosei
    from mtdistill.evaluation.mult.evaluate import evaluate_mult_run
    from mtdistill.evaluation.mult.report import render_mult_table
    from mtdistill.training.mult import load_mult_config, train_mult

    out = Path(args.out)
    configs = Path(args.configs) if args.configs else Path(__file__).resolve().parents[3] / "configs"
    missing = [r for r in DEMO_RECIPES if not (configs / r).is_file()]
    if missing:
        raise UserError(
            f"demo recipes {missing} not found in {configs}; pass --configs pointing at the repo's configs/"
        )
    data = out / "data"
    if not (data / "mosei_senti_data_noalign.pkl").is_file():
        write_synthetic_mosei(data, SynthMoseiConfig(n_train=800, n_valid=200, n_test=400, lengths=(10, 50, 50)))
    runs = []
    teacher_run = out / "runs" / "mult_demo_teacher"
    for recipe in DEMO_RECIPES:
        overrides = [f"data.pickle={data}", f"output.dir={out / 'runs'}", f"teacher.run={teacher_run}"]
        if args.epochs:
            overrides.append(f"trainer.epochs={args.epochs}")
        cfg = load_mult_config(configs / recipe, overrides)
        if cfg["kind"] == "teacher":
            cfg["teacher"] = {"run": None, "checkpoint": None}
        print(f"== {cfg['name']}", file=sys.stderr)
        train_mult(cfg, resume=None)
        run_dir = Path(cfg["output"]["dir"]) / cfg["name"]
        evaluate_mult_run(run_dir)
        runs.append(run_dir)
    paths = render_mult_table(runs, out / "report")
    print(Path(paths["markdown"]).read_text())
    return 0
