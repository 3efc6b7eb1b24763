"""`evaluate_to_folder`: a checkpoint (or run folder) evaluated on a store split with the official protocol,
written as results.json, per_utterance.csv and results.md (what `mtdistill evaluate` does).

The evaluation uses one ``Quirks`` object: the run's own (the ``quirks:`` section of its config.yaml) when the
checkpoint is a run folder or a file inside one, else the flags stored in the checkpoint (faithful for official
files); ``clean`` and ``quirk_changes`` (``--clean``, ``--quirk NAME=VALUE``) change it. The model is rebuilt with
those flags when they differ from the ones it was saved with, the protocol and the validation F1 read theirs, and
results.json records every flag used (``quirks``) and where they came from (``quirks_source``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from mtdistill import __version__
from mtdistill.core.devices import pick_device
from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks, switched_off
from mtdistill.core.runs import CHECKPOINT_DIR, CONFIG
from mtdistill.core.safeio import atomic_write_text
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
from mtdistill.models.vocalist import VocaLiST


def run_config_path(ckpt: Path, run_dir: Path | None) -> Path | None:
    """config.yaml of the run the checkpoint belongs to (RUN/model_*.safetensors, RUN/checkpoints/*.ckpt)."""
    candidates = [run_dir] if run_dir is not None else []
    candidates += [ckpt.parent] + ([ckpt.parent.parent] if ckpt.parent.name == CHECKPOINT_DIR else [])
    for folder in candidates:
        if (folder / CONFIG).is_file():
            return folder / CONFIG
    return None


def run_quirks(config_path: Path) -> Quirks:
    """The ``quirks:`` section of a run's config.yaml over the faithful flags (a recipe without one: faithful)."""
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"run config {config_path} cannot be read ({type(exc).__name__}); fix or remove it") from None
    section = data.get("quirks") if isinstance(data, Mapping) else None
    if section is None:
        return Quirks()
    if not isinstance(section, Mapping):
        raise UserError(f"run config {config_path}: 'quirks' must be a mapping of flags, got {section!r}")
    try:
        return Quirks().replace(**section)
    except UserError as exc:
        raise UserError(f"run config {config_path}: {exc}") from None


def with_model_quirks(model: VocaLiST, quirks: Quirks) -> VocaLiST:
    """The model with ``quirks`` (PE rule, VA mask): itself when it already has them, else rebuilt, same weights."""
    if model.quirks == quirks:
        return model
    rebuilt = VocaLiST(model.config, model.preset, quirks=quirks)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    return rebuilt.eval()


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
    quirks: Quirks | None = None,
    clean: bool = False,
    quirk_changes: Mapping[str, object] | None = None,
) -> dict:
    """Evaluate a checkpoint (or run folder) on a store split; write results.json, per_utterance.csv, results.md.

    Quirks: ``quirks`` when given, else the run's (config.yaml) or the checkpoint's; ``clean`` replaces them by
    ``Quirks.clean()``; ``quirk_changes`` (flag -> value) then change single flags; ``official_edges=False`` is a
    shortcut for ``eval_ifelif_edges=False``.
    """
    lengths = check_lengths(lengths)
    changes = dict(quirk_changes or {})
    Quirks().replace(**changes)  # unknown names and bad values stop here, before any work
    ckpt, run_dir = resolve_checkpoint(checkpoint)
    config_path = run_config_path(ckpt, run_dir)
    base = quirks if quirks is not None else (run_quirks(config_path) if config_path is not None else None)
    store = open_store(str(data))
    device = pick_device(device)
    model = load_model(ckpt, preset)
    if base is None:
        base, source = model.quirks, "checkpoint"
    else:
        source = "argument" if quirks is not None else f"run config {config_path}"
    if clean:
        base, source = Quirks.clean(), "clean"
    used = switched_off(base.replace(**changes), eval_ifelif_edges=official_edges)
    if used != base:
        source += " + changes"
    model = with_model_quirks(model, used)
    out = Path(out) if out else (run_dir / "eval" if run_dir is not None else Path("eval"))

    ev = evaluate_store(
        model, store, split, lengths, max_utterances=max_utterances,
        device=device, fast=False if plain else None, quirks=used,
    )  # fmt: skip
    f1 = None
    if val_f1 and store.ids("val"):
        try:
            f1 = validation_f1(model, store, "val", seed=0, length=val_pairs, device=device, quirks=used)
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
        "quirks": used.as_dict(),
        "quirks_source": source,
        "protocol": {
            "lengths": list(lengths),
            "candidates": N_CANDIDATES,
            "tolerance": TOLERANCE,
            "official_edges": used.eval_ifelif_edges,
            "exclude_last_window": used.eval_exclude_last_window,
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
    atomic_write_text(out / "results.md", results_markdown(results))
    return {**results, "out": str(out)}
