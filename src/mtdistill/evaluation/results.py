"""Finding the model to evaluate, and writing eval/results.json, per_utterance.csv and results.md."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from mtdistill.core.errors import UserError
from mtdistill.core.safeio import atomic_write_text
from mtdistill.evaluation import reference
from mtdistill.models import STUDENT, TEACHER, VocaLiST
from mtdistill.models.presets import check_preset

BEST, LAST = "model_best.safetensors", "model_last.safetensors"


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """CKPT argument -> (checkpoint file, run folder or None). A run folder gives its model_best (else model_last)."""
    p = Path(path)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                return p / name, p
        raise UserError(f"{p} is a folder without {BEST} or {LAST}; train it first or give a checkpoint file")
    if not p.exists():
        raise UserError(f"checkpoint {p} not found; give a model_*.safetensors, a run folder or an official .pth")
    run_dir = p.parent if (p.parent / "config.yaml").is_file() else None
    return p, run_dir


def load_model(path: Path, preset: str | None):
    """Load any VocaLiST-family checkpoint; stop with a one-line error when it has no input preset."""
    model = VocaLiST.from_checkpoint(path, preset=preset)
    check_preset(model.preset)
    return model


def model_name(model) -> str:
    config = getattr(model, "config", None)
    if config == TEACHER:
        return "VocaLiST (teacher)"
    if config == STUDENT:
        return "MTDVocaLiST (student)"
    if config is not None:
        return f"VocaLiST-family (d_model={config.d_model})"
    return type(model).__name__


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt_cell(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt_cell(v: Any) -> Any:
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_markdown(results: dict) -> str:
    """results.md: our accuracies beside the paper's teacher and student (design.md §4.4)."""
    ks = [int(k) for k in results["accuracy"]]
    header = ["model", "source", *[f"K={k}" for k in ks]]
    rows = [[results["model"], "ours", *[results["accuracy"][str(k)] for k in ks]]]
    for name, ref in (("VocaLiST", reference.SOTA["VocaLiST"]["acc"]), ("MTDVocaLiST", reference.TABLE1["MTD"])):
        rows.append([name, "paper (LRS2 test)", *[ref.get(k) for k in ks]])
    p = results["protocol"]
    lines = [
        f"# Evaluation: {results['model']} on {results['data']} ({results['split']})",
        "",
        markdown_table(header, rows),
        f"- {results['n_utterances']} utterances evaluated, {results['n_skipped']} skipped; "
        f"{results['timing']['windows']} windows in {results['timing']['seconds']:.1f} s "
        f"({results['timing']['windows_per_s']:.1f} windows/s, {results['timing']['path']} path, "
        f"{results['timing']['device']})",
        f"- protocol: 31 candidates (+-15), +-{p['tolerance']} frame tolerance, "
        f"{'official if/elif edges' if p['official_edges'] else 'fixed edges (both sides masked)'}, "
        f"{'last window excluded (official)' if p['exclude_last_window'] else 'last window kept'}, "
        "macro average over utterances",
        f"- parameters: {results['params']:,}; preset: {results['preset']}",
    ]
    if results.get("val_f1") is not None:
        lines.append(f"- validation weighted F1 (logit > 0.5, fixed seeded pairs): {100 * results['val_f1']:.2f} %")
    lines.append("- the paper numbers are on LRS2; on other data they are context, not a target")
    return "\n".join(lines) + "\n"
