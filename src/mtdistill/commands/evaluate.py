"""`mtdistill evaluate CKPT DATA`: the official LRS2-style retrieval protocol on a store split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtdistill.errors import UserError

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
        help="mask zero-padded candidates on both sides (not the official if/elif)",
    )
    parser.add_argument("--max-utterances", type=int, help="evaluate only the first N utterances of the split")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--out", help="output folder (default: <run>/eval for a run folder, else ./eval)")
    parser.add_argument("--plain", action="store_true", help="official-style loop (31 forwards per window), slower")
    parser.add_argument("--no-val-f1", action="store_true", help="skip the validation F1 on the store's val split")
    parser.add_argument("--val-pairs", type=int, help="number of fixed validation pairs (default: one per utterance)")


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return name


def open_store(path: str):
    from mtdistill.data.store import Store

    if not Path(path).exists():
        raise UserError(f"data {path} not found; give a store folder made by `mtdistill prepare SRC OUT`")
    try:
        store = Store.open(path)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if len(store) == 0:
        raise UserError(f"the store {path} holds no utterances; run `mtdistill prepare` on some videos first")
    return store


def run(args: argparse.Namespace) -> int:
    results = evaluate_to_folder(
        args.checkpoint, args.data, split=args.split, preset=args.preset, lengths=parse_lengths(args.lengths),
        official_edges=not args.fixed_edges, max_utterances=args.max_utterances, device=args.device,
        out=args.out, plain=args.plain, val_f1=not args.no_val_f1, val_pairs=args.val_pairs,
    )  # fmt: skip
    accs = "  ".join(f"K{k}={v:.2f}%" for k, v in results["accuracy"].items())
    print(f"{results['model']}: {accs}  ({results['n_utterances']} utterances, {results['n_skipped']} skipped) "
          f"-> {results['out']}")  # fmt: skip
    return 0


def evaluate_to_folder(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    preset: str | None = None,
    lengths: tuple[int, ...] = (5, 7, 9, 11, 13, 15),
    official_edges: bool = True,
    max_utterances: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    plain: bool = False,
    val_f1: bool = True,
    val_pairs: int | None = None,
) -> dict:
    """Evaluate a checkpoint (or run folder) on a store split; write results.json, per_utterance.csv, results.md."""
    import torch

    from mtdistill import __version__
    from mtdistill.evaluation.protocol import N_CANDIDATES, TOLERANCE, check_lengths
    from mtdistill.evaluation.results import (
        load_model,
        model_name,
        resolve_checkpoint,
        results_markdown,
        write_csv,
        write_json,
    )
    from mtdistill.evaluation.runner import evaluate_store, validation_f1
    from mtdistill.quirks import Quirks

    lengths = check_lengths(lengths)
    ckpt, run_dir = resolve_checkpoint(checkpoint)
    store = open_store(str(data))
    device = pick_device(device)
    model = load_model(ckpt, preset)
    quirks = Quirks()
    out = Path(out) if out else (run_dir / "eval" if run_dir is not None else Path("eval"))

    ev = evaluate_store(
        model, store, split, lengths, official_edges, max_utterances,
        device=device, fast=False if plain else None, quirks=quirks,
    )  # fmt: skip
    f1 = None
    if val_f1 and store.ids("val"):
        try:
            f1 = validation_f1(model, store, "val", seed=0, length=val_pairs, device=device, quirks=quirks)
        except UserError as exc:  # e.g. every val utterance shorter than the sampler needs
            print(f"warning: no validation F1: {exc}", file=sys.stderr)

    results = {
        "model": model_name(model),
        "checkpoint": str(ckpt),
        "params": int(sum(p.numel() for p in model.parameters())),
        "preset": model.preset,
        "data": str(data),
        "split": split,
        "accuracy": {str(k): round(100.0 * v, 4) for k, v in ev.accuracy.items()},
        "n_utterances": ev.n_utterances,
        "n_skipped": len(ev.skipped),
        "skipped": ev.skipped,
        "val_f1": f1,
        "protocol": {
            "lengths": list(lengths),
            "candidates": N_CANDIDATES,
            "tolerance": TOLERANCE,
            "official_edges": official_edges,
            "exclude_last_window": quirks.eval_exclude_last_window,
            "average": "macro over utterances",
        },
        "timing": {
            "seconds": round(ev.seconds, 3),
            "windows": ev.n_windows,
            "windows_per_s": round(ev.windows_per_s, 3),
            "path": "fast" if ev.fast else "plain",
            "device": device,
            "torch": torch.__version__,
        },
        "mtdistill": __version__,
    }
    write_json(out / "results.json", results)
    rows = [{**r, "status": "ok"} for r in ev.rows] + [{"uid": s["uid"], "status": s["reason"]} for s in ev.skipped]
    write_csv(out / "per_utterance.csv", rows)
    (out / "results.md").write_text(results_markdown(results))
    return {**results, "out": str(out)}
