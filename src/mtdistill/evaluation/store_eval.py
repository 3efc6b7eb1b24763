"""`evaluate_to_folder`: a checkpoint (or run folder) evaluated on a store split with the official protocol,
written as results.json, per_utterance.csv and results.md (what `mtdistill evaluate` does)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mtdistill import __version__
from mtdistill.core.devices import pick_device
from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.core.timing import N_CANDIDATES
from mtdistill.data.store import open_store
from mtdistill.evaluation.protocol import TOLERANCE, check_lengths
from mtdistill.evaluation.results import (
    load_model,
    model_name,
    resolve_checkpoint,
    results_markdown,
    write_csv,
    write_json,
)
from mtdistill.evaluation.runner import evaluate_store, validation_f1


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
