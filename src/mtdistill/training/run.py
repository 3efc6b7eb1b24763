"""Entry points behind ``mtdistill train`` and ``mtdistill distill``: build everything from a recipe and fit.

``run_recipe(cfg)`` makes runs/<name>/ (docs/internal_api.md "Run folder"), resumes from
checkpoints/last.ckpt when it exists, and returns the summary dict that it also writes as summary.json.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from mtdistill.core.errors import UserError
from mtdistill.core.runs import CHECKPOINT_DIR, CONFIG, LAST, METRICS, SUMMARY
from mtdistill.core.safeio import atomic_write_text
from mtdistill.distill import (
    LOSSES,  # importing the package registers every built-in loss
    build_loss,
)
from mtdistill.models.vocalist import STUDENT, TEACHER, TINY, VocaLiST, VocaLiSTConfig
from mtdistill.training.checkpoints import read_checkpoint_step
from mtdistill.training.config import dump_config, quirks_of
from mtdistill.training.datamodule import PairDataModule
from mtdistill.training.engine import fit_run
from mtdistill.training.module import SyncLightningModule

SIZES = ("teacher", "student", "tiny")


def build_model(model_cfg: dict[str, Any], quirks: Any) -> Any:
    """The model to train: a preset size, or ``custom`` from ``model.config`` (VocaLiSTConfig fields)."""
    if model_cfg.get("init_checkpoint"):
        model = VocaLiST.from_checkpoint(model_cfg["init_checkpoint"], preset=model_cfg["preset"])
        return model.train()
    base = {"teacher": TEACHER, "student": STUDENT, "tiny": TINY, "custom": STUDENT}[model_cfg["size"]]
    overrides = dict(model_cfg.get("config") or {})
    known = {f.name for f in dataclasses.fields(VocaLiSTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown key 'model.config.{unknown[0]}'; VocaLiSTConfig fields: {', '.join(sorted(known))}")
    config = dataclasses.replace(base, **overrides) if overrides else base
    model = VocaLiST(config, model_cfg["preset"], quirks=quirks)
    if model_cfg.get("init_from"):
        copied = model.copy_matching_weights(model_cfg["init_from"])
        print(f"model.init_from: {len(copied)} of {len(model.state_dict())} tensors from {model_cfg['init_from']}",
              file=sys.stderr)  # fmt: skip
    return model


def build_teacher(cfg: dict[str, Any], quirks: Any) -> Any:
    """Frozen teacher from ``teacher.checkpoint`` (our file or an official one), or random of ``teacher.size``."""
    t = cfg["teacher"]
    if t["checkpoint"]:
        path = Path(t["checkpoint"])
        if not path.is_file():
            raise UserError(
                f"teacher checkpoint {path} not found; train one with `mtdistill train` or set teacher.checkpoint"
            )
        teacher = VocaLiST.from_checkpoint(path, preset=t["preset"])
        if teacher.preset is None:
            raise UserError(
                f"teacher {path} has no input preset (an official file); set teacher.preset: vocalist "
                "(vocalist_5f_lrs2.pth) or mtd (MTD re-trained teacher)"
            )
    else:
        factory = {"teacher": VocaLiST.teacher, "student": VocaLiST.student, "tiny": VocaLiST.tiny}[t["size"]]
        teacher = factory(preset=t["preset"] or cfg["model"]["preset"], quirks=quirks)
    return teacher.eval().requires_grad_(False)


def _loss_kwargs(name: str, kwargs: dict[str, Any], quirks: Any, student: Any, teacher: Any) -> dict[str, Any]:
    """Fill what the run knows and the recipe did not say: quirks and, for FitNets, the two widths."""
    cls = LOSSES.get(name)
    if cls is None:
        return kwargs
    params = inspect.signature(cls.__init__).parameters
    out = dict(kwargs)
    if "quirks" in params and "quirks" not in out:
        out["quirks"] = quirks
    if "student_dim" in params and "student_dim" not in out:
        out["student_dim"] = student.config.d_model
    if "teacher_dim" in params and "teacher_dim" not in out and teacher is not None:
        out["teacher_dim"] = teacher.config.d_model
    return out


def _loss_needs_teacher(name: str) -> bool:
    if name not in LOSSES:
        build_loss(name)  # raises the registry's one-line "unknown loss" error
    return bool(getattr(LOSSES[name], "needs_teacher", True))


def build_losses(cfg: dict[str, Any], quirks: Any, student: Any, teacher: Any) -> tuple[Any, dict[str, Any]]:
    spec = dict(cfg["loss"])
    name = spec.pop("name")
    loss = build_loss(name, **_loss_kwargs(name, spec, quirks, student, teacher))
    extras: dict[str, Any] = {}
    for entry in cfg["val_extra_losses"]:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        extra_name = entry.pop("name")
        label = str(entry.pop("label", extra_name))
        extra = build_loss(extra_name, **_loss_kwargs(extra_name, entry, quirks, student, teacher))
        if getattr(extra, "needs_teacher", True) and teacher is None:
            raise UserError(f"val_extra_losses entry {label!r} needs a teacher; it only works with `distill` recipes")
        extras[label.replace(".", "_")] = extra
    return loss, extras


def resolve_resume(run_dir: Path, resume: bool | str | None) -> Path | None:
    """None = automatic (resume when last.ckpt exists), True = must resume, False = must start fresh, str = path."""
    last = run_dir / CHECKPOINT_DIR / LAST
    if isinstance(resume, str):
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"--resume {path}: no such checkpoint; use runs/<name>/checkpoints/last.ckpt")
        return path
    if resume is True and not last.is_file():
        raise UserError(f"--resume: {last} does not exist; drop --resume to start the run")
    if resume is False and last.is_file():
        raise UserError(f"{run_dir} already has checkpoints; remove the folder or choose another name (--set name=...)")
    return last if last.is_file() else None


def _launcher_rank() -> int:
    """Global rank as known before Lightning sets up the processes (torchrun, SLURM, Lightning's own launcher)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ and (var != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", "0")) * 1000 + int(os.environ.get("LOCAL_RANK", "0"))


def _check_previous_config(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose model / loss / data differ: mixing them would corrupt the run."""
    import yaml

    path = run_dir / CONFIG
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    for key in ("kind", "model", "loss", "teacher"):
        if key in old and old[key] != cfg.get(key):
            raise UserError(
                f"{run_dir} was started with a different '{key}'; resume with the same recipe, "
                "or choose another name (--set name=...)"
            )


def _quiet_lightning_tips() -> None:
    """Drop Lightning's advertising tip from the log; keep its useful lines (devices, stop reason)."""
    import logging

    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoTips) for f in logger.filters):
            logger.addFilter(NoTips())


def run_recipe(cfg: dict[str, Any], *, expect_kind: str | None = None, resume: bool | str | None = None) -> dict:
    """Train or distill according to a validated recipe; return the run summary."""
    import lightning.pytorch as pl

    if expect_kind is not None and cfg["kind"] != expect_kind:
        other = "distill" if expect_kind == "train" else "train"
        raise UserError(f"recipe {cfg['name']!r} has kind: {cfg['kind']}; run it with `mtdistill {other}`")
    quirks = quirks_of(cfg)
    run_dir = Path(cfg["output"]["dir"]) / cfg["name"]
    ckpt_path = resolve_resume(run_dir, resume)
    if ckpt_path is not None:
        _check_previous_config(run_dir, cfg)
    PairDataModule.split_size(cfg["data"]["store"], cfg["data"]["train_split"])  # clear error for a bad store path

    _quiet_lightning_tips()
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    student = build_model(cfg["model"], quirks)
    loss_name = cfg["loss"]["name"]
    wants_teacher = _loss_needs_teacher(loss_name) or bool(cfg["val_extra_losses"])
    if cfg["kind"] == "train" and _loss_needs_teacher(loss_name):
        raise UserError(f"loss {loss_name!r} needs a teacher; use a `distill` recipe with teacher.checkpoint")
    # the BCE-only row of Table 1 is a distill recipe whose loss never reads the teacher: do not load it
    teacher = build_teacher(cfg, quirks) if cfg["kind"] == "distill" and wants_teacher else None
    loss, val_losses = build_losses(cfg, quirks, student, teacher)

    module = SyncLightningModule(student, loss, {**cfg, "_quirks": quirks}, teacher=teacher, val_losses=val_losses)
    data = PairDataModule(cfg["data"], seed=int(cfg["seed"]), preset=cfg["model"]["preset"], quirks=quirks)
    has_val = (
        bool(cfg["data"]["val_split"]) and PairDataModule.split_size(cfg["data"]["store"], cfg["data"]["val_split"]) > 0
    )
    if not has_val:
        if cfg["trainer"].get("stop_at_val_f1") is not None:
            raise UserError("trainer.stop_at_val_f1 needs a validation split with utterances; set data.val_split")
        cfg["data"]["val_split"] = None

    run_dir.mkdir(parents=True, exist_ok=True)
    first = _launcher_rank() == 0
    if first:
        atomic_write_text(run_dir / CONFIG, dump_config(cfg))
        if ckpt_path is None and (run_dir / METRICS).is_file():
            (run_dir / METRICS).unlink()  # a fresh run must not append to an older run's rows
    resume_step = read_checkpoint_step(ckpt_path) if ckpt_path is not None and first else None
    t = cfg["trainer"]
    fit_run(
        module, data, cfg, run_dir, student.num_parameters(), ckpt_path, resume_step,
        num_nodes=int(t["num_nodes"]),
        strategy=t["strategy"],
        accumulate_grad_batches=int(t["accumulate_grad_batches"]),
        check_val_every_n_epoch=int(t["val_every"]),
        limit_val_batches=(t["limit_val_batches"] if t["limit_val_batches"] is not None else 1.0) if has_val else 0,
    )  # fmt: skip
    summary_path = run_dir / SUMMARY
    return json.loads(summary_path.read_text()) if summary_path.is_file() else {}
