"""`mtdistill evaluate CKPT DATA`: the official LRS2-style retrieval protocol on a store split."""

from __future__ import annotations

import argparse

from mtdistill.core.errors import UserError

HELP = "protocol accuracy per context length (K = 5..15) of a checkpoint on a store split (JSON / CSV / Markdown)"


def parse_lengths(text: str) -> tuple[int, ...]:
    from mtdistill.evaluation.protocol import check_lengths

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lengths must be comma-separated odd integers such as 5,7,9, got {text!r}") from None
    return check_lengths(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="model_*.safetensors, a run folder, or an official .pth")
    parser.add_argument("data", metavar="DATA", help="a packed store (mtdistill prepare)")
    parser.add_argument("--split", default="test", help="store split to evaluate (default: test)")
    parser.add_argument("--preset", choices=("vocalist", "mtd"), help="input preset; required for official .pth")
    parser.add_argument("--lengths", default="5,7,9,11,13,15", help="context lengths K (default: 5,7,9,11,13,15)")
    parser.add_argument(
        "--fixed-edges",
        action="store_true",
        help="mask zero-padded candidates on both sides (not the official if/elif); = --quirk eval_ifelif_edges=false",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="turn every quirk of the official code off (Quirks.clean()) instead of using the run's quirks",
    )
    parser.add_argument(
        "--quirk",
        dest="quirks",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one quirk flag after the run's (or --clean) ones, e.g. --quirk eval_exclude_last_window=false "
        "(repeatable; flags: docs/evaluation.md)",
    )
    parser.add_argument("--max-utterances", type=int, help="evaluate only the first N utterances of the split")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--out", help="output folder (default: <run>/eval for a run folder, else ./eval)")
    parser.add_argument("--plain", action="store_true", help="official-style loop (31 forwards per window), slower")
    parser.add_argument("--no-val-f1", action="store_true", help="skip the validation F1 on the store's val split")
    parser.add_argument("--val-pairs", type=int, help="number of fixed validation pairs (default: one per utterance)")


def run(args: argparse.Namespace) -> int:
    from mtdistill.core.quirks import parse_assignment

    changes = dict(parse_assignment(text) for text in args.quirks)  # bad names: one line, before any work
    from mtdistill.core.outputs import check_output_folder
    from mtdistill.data.store import open_store

    if args.max_utterances is not None and args.max_utterances < 1:
        raise UserError(f"--max-utterances must be >= 1 (or left out for all), got {args.max_utterances}")
    if args.out:
        check_output_folder(args.out, "--out")
    with open_store(args.data) as store:  # damaged shards are named now, not after the model has loaded
        store.check_shards(store.ids(args.split) + ([] if args.no_val_f1 else store.ids("val")))
    from mtdistill.evaluation.store_eval import evaluate_to_folder

    results = evaluate_to_folder(
        args.checkpoint, args.data, split=args.split, preset=args.preset, lengths=parse_lengths(args.lengths),
        official_edges=not args.fixed_edges, max_utterances=args.max_utterances, device=args.device,
        out=args.out, plain=args.plain, val_f1=not args.no_val_f1, val_pairs=args.val_pairs,
        clean=args.clean, quirk_changes=changes,
    )  # fmt: skip
    accs = "  ".join(f"K{k}={v:.2f}%" for k, v in results["accuracy"].items())
    print(f"{results['model']}: {accs}  ({results['n_utterances']} utterances, {results['n_skipped']} skipped) "
          f"-> {results['out']}")  # fmt: skip
    return 0
