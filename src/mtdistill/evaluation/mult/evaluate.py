"""Evaluation of a finished MulT / video-student run: metrics on a split, latency, RUN/eval/ files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from mtdistill.core.errors import UserError
from mtdistill.core.runs import CONFIG
from mtdistill.core.safeio import atomic_write_text
from mtdistill.data.mult.mosei import MoseiDataset, MoseiSplit, load_mosei
from mtdistill.distill.mult.objective import logits_of
from mtdistill.metrics.mult import majority_baseline, mosei_metrics
from mtdistill.models.mult import MulT, VideoStudent, load_mult_checkpoint, resolve_model_file


@torch.no_grad()
def predict(model: nn.Module, split: MoseiSplit, batch_size: int = 64) -> np.ndarray:
    """Model outputs on a whole split (eval mode, CPU or the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for batch in DataLoader(MoseiDataset(split), batch_size=batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        outs.append(logits_of(model.forward_batch(batch)).float().cpu())
    return torch.cat(outs).numpy()


def measure_latency(
    model: nn.Module,
    split: MoseiSplit,
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
) -> dict[str, float]:
    """Median forward latency (ms) of one batch, after warm-up; CUDA is synchronised when used."""
    model.eval()
    device = next(model.parameters()).device
    batch = next(iter(DataLoader(MoseiDataset(split), batch_size=batch_size)))
    batch = {k: v.to(device) for k, v in batch.items()}
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.forward_batch(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(old)
    return {
        "latency_ms": float(np.median(times)),
        "latency_min_ms": float(np.min(times)),  # the least disturbed run: robust on a shared, busy machine
        "latency_batch": batch_size,
        "device": str(device),
        "threads": threads or old,
    }


def evaluate_mult_run(
    run_dir: str | Path, split: str = "test", pickle_path: str | None = None, latency: bool = True
) -> dict[str, Any]:
    """Metrics of a run's best model on ``split``; writes RUN/eval/results.json, results.md, per_sample.csv."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG}); pass the folder `mtdistill mult train` wrote")
    cfg = yaml.safe_load(cfg_path.read_text())
    model = load_mult_checkpoint(resolve_model_file(run_dir))
    about = {k: cfg.get(k) for k in ("name", "kind", "method", "row", "configuration")}
    return _evaluate(model, pickle_path or cfg["data"]["pickle"], split, about, run_dir / "eval", latency)


def evaluate_mult_checkpoint(
    path: str | Path,
    pickle_path: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    heads: int | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """Metrics of a MulT teacher file (an official pickle or state_dict, or ours) on ``split`` of a MOSEI pickle;
    the files of `evaluate_mult_run` go to ``out`` when given (nothing is written beside the checkpoint)."""
    model = MulT.from_checkpoint(path, heads=heads)
    about = {"name": Path(path).stem, "kind": "teacher", "method": "MulT", "row": None, "configuration": None}
    return _evaluate(model, pickle_path, split, about, Path(out) if out else None, latency)


def _evaluate(
    model: nn.Module, pickle_path: str | Path, split: str, about: dict[str, Any], out: Path | None, latency: bool
) -> dict[str, Any]:
    splits = load_mosei(pickle_path)
    if split not in splits:
        raise UserError(f"split {split!r} is not one of {list(splits)}")
    outputs = predict(model, splits[split])
    metrics = mosei_metrics(outputs, splits[split].labels)
    result: dict[str, Any] = {
        **about,
        "split": split,
        "metrics": metrics,
        "majority_baseline": majority_baseline(splits["train"].classes, splits[split].classes),
        "params": model.num_parameters(),
        "model": {
            "kind": "teacher" if isinstance(model, MulT) else "student",
            "mode": model.config.mode if isinstance(model, MulT) else None,
            "student_kind": model.config.kind if isinstance(model, VideoStudent) else None,
        },
    }
    if latency:
        result["latency"] = measure_latency(model, splits[split])
    if out is None:
        return result
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    rows = ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    ]
    atomic_write_text(out / "results.md", f"# {about['name']} on {split}\n\n" + "\n".join(rows) + "\n")
    pred = outputs.argmax(axis=1) if outputs.ndim == 2 and outputs.shape[1] > 1 else outputs.reshape(-1)
    lines = ["index,label,prediction"] + [
        f"{i},{y:.4f},{p}" for i, (y, p) in enumerate(zip(splits[split].labels, pred, strict=True))
    ]
    atomic_write_text(out / "per_sample.csv", "\n".join(lines) + "\n")
    return result
