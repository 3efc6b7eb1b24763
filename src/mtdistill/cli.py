"""Command-line front end. Each sub-command lives in ``mtdistill.commands.<name>`` (imported lazily)."""

from __future__ import annotations

import argparse
import importlib
import sys

from mtdistill.core.errors import UserError

COMMANDS = (
    "demo",
    "synth",
    "prepare",
    "train",
    "distill",
    "evaluate",
    "report",
    "experiment",
    "sync",
    "score",
    "fix",
    "export",
    "weights",
    "bench",
    "mult",
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="mtdistill",
        description="Multimodal Transformer distillation: VocaLiST -> MTDVocaLiST, MulT -> video-only students.",
        epilog="Start with `mtdistill demo`; `mtdistill COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"mtdistill {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mtdistill.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name == f"mtdistill.commands.{name}":
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def _version() -> str:
    from mtdistill import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(modules[args.command].run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs were kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
