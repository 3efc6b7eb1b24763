"""Run-folder checkpoints: atomic Lightning checkpoints, our model files, summary.json, RNG state.

Layout (docs/internal_api.md, "Run folder"):
    checkpoints/epoch=NNN.ckpt   full Lightning state after 0-based epoch NNN
    checkpoints/last.ckpt        copy of the newest one (what resume reads)
    checkpoints/best.ckpt        copy of the one with the highest val weighted F1 (``improves``: strictly greater
                                 as released, ``Quirks.best_strictly_greater``)
    model_last.safetensors / model_best.safetensors   ``model.save_checkpoint`` files
    summary.json
Every file is written to a temporary name and moved into place with ``os.replace``, so a SIGKILL at any moment
leaves either the previous complete file or the new complete file, never a truncated one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtdistill.core.quirks import FAITHFUL, Quirks
from mtdistill.core.runs import BEST, CHECKPOINT_DIR, LAST, MODEL_BEST, MODEL_LAST, SUMMARY
from mtdistill.core.safeio import atomic_copy, atomic_path, atomic_write_text


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch={epoch:03d}.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but written to a temporary file and renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states as plain containers (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def reseed(seed: int, *keys: int) -> int:
    """Reseed torch / numpy / python from (seed, *keys), e.g. (seed, rank, epoch, batch index).

    The trainer calls it before every training batch. This is what makes resume exact: dropout masks and any
    other global-RNG draw of a step depend only on these integers, not on how many draws happened before
    (validation, DataLoader start-up, Lightning's restore path, ...). Different ranks get different streams.
    """
    mixed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]).generate_state(1, dtype=np.uint32)[0])
    torch.manual_seed(mixed)
    np.random.seed(mixed)
    random.seed(mixed)
    return mixed


def seed_epoch(seed: int, epoch: int, rank: int) -> int:
    """Epoch-level ``reseed`` (kept for the MulT trainer); the VocaLiST trainer reseeds per batch instead."""
    return reseed(seed, epoch, rank)


def read_checkpoint_step(path: Path) -> int:
    """Global step stored in a Lightning checkpoint (memory-mapped: the weights are not read)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return int(ckpt.get("global_step", 0))


def improves(f1: float | None, best: float | None, strictly_greater: bool = FAITHFUL.best_strictly_greater) -> bool:
    """Whether an epoch's validation F1 makes it the new best one.

    ``strictly_greater`` (``Quirks.best_strictly_greater``, the released MTD rule): only a higher F1 replaces the
    best, so on a tie the earlier epoch stays. False: a tie moves the best to the later epoch. A missing or NaN F1
    never improves.
    """
    if f1 is None or f1 != f1:
        return False
    if best is None:
        return True
    return f1 > best if strictly_greater else f1 >= best


def _module_quirks(pl_module: pl.LightningModule) -> Quirks:
    """The run's Quirks object as the trainer module carries it (``cfg["_quirks"]``); faithful when absent."""
    cfg = getattr(pl_module, "cfg", None)
    quirks = cfg.get("_quirks") if isinstance(cfg, dict) else None
    return quirks if isinstance(quirks, Quirks) else FAITHFUL


class RunCheckpoints(pl.Callback):
    """After every training epoch (validation has run by then): epoch/last/best checkpoints, model files, summary.

    Best = the epoch whose validation weighted F1 ``improves`` on every earlier one: strictly greater as released
    (``Quirks.best_strictly_greater``; ``quirks`` None = the flags the trained module carries). Its state (best F1
    and epoch) travels inside the Lightning checkpoint so that resume keeps it.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        name: str,
        method: str,
        params: int,
        epoch_checkpoints: bool = True,
        quirks: Quirks | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / CHECKPOINT_DIR
        self.name = name
        self.method = method
        self.params = params
        self.epoch_checkpoints = epoch_checkpoints
        self.quirks = quirks
        self.best_val_f1: float | None = None
        self.best_epoch: int | None = None
        self.epochs_done = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_f1": self.best_val_f1, "best_epoch": self.best_epoch, "epochs_done": self.epochs_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val_f1 = state_dict.get("best_val_f1")
        self.best_epoch = state_dict.get("best_epoch")
        self.epochs_done = int(state_dict.get("epochs_done", 0))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        f1 = getattr(pl_module, "val_f1_of_epoch", {}).get(epoch)
        quirks = self.quirks or _module_quirks(pl_module)
        improved = improves(f1, self.best_val_f1, quirks.best_strictly_greater)
        if improved:
            self.best_val_f1, self.best_epoch = float(f1), epoch
        self.epochs_done = epoch + 1

        # trainer.save_checkpoint is collective (it barriers); only rank 0 writes the file
        target = self.ckpt_dir / (epoch_checkpoint_name(epoch) if self.epoch_checkpoints else LAST)
        trainer.save_checkpoint(target, weights_only=False)
        if trainer.is_global_zero:
            if self.epoch_checkpoints:
                atomic_copy(target, self.ckpt_dir / LAST)
            if improved:
                atomic_copy(self.ckpt_dir / LAST, self.ckpt_dir / BEST)
            model = pl_module.student
            extra = {"run": self.name, "method": self.method, "epoch": epoch, "val_f1": f1}
            model.save_checkpoint(self.run_dir / MODEL_LAST, extra=extra)
            if improved:
                model.save_checkpoint(self.run_dir / MODEL_BEST, extra=extra)
            self.write_summary(trainer, finished=False)
        trainer.strategy.barrier("RunCheckpoints.epoch_end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            # an early stop (trainer.stop_at_val_f1) is a finished run too: resuming would only stop again
            done = self.epochs_done >= (trainer.max_epochs or 0) or bool(trainer.should_stop)
            self.write_summary(trainer, finished=done)

    def write_summary(self, trainer: pl.Trainer, *, finished: bool) -> None:
        summary = {
            "name": self.name,
            "method": self.method,
            "params": self.params,
            "best_val_f1": self.best_val_f1,
            "best_epoch": self.best_epoch,
            "epochs_done": self.epochs_done,
            "finished": bool(finished),
            "global_step": int(trainer.global_step),
        }
        atomic_write_text(self.run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")


class ResumableStateMixin:
    """LightningModule hooks shared by every trainer: RNG state and per-epoch F1 travel in the checkpoint
    (exact resume), and gradient clipping covers the whole update (model + loss weights)."""

    val_f1_of_epoch: dict[int, float]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mtdistill"] = {"rng": rng_state(), "val_f1_of_epoch": dict(self.val_f1_of_epoch)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("mtdistill", {})
        if "rng" in state:
            set_rng_state(state["rng"])
        self.val_f1_of_epoch = {int(k): float(v) for k, v in state.get("val_f1_of_epoch", {}).items()}

    def log_train_step(self, total, batch_size: int):
        """Log the total, every term of the loss (Fig. 4 curves) and the lr; return the total."""
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        for name, value in getattr(self.loss, "terms", {}).items():
            if name != "total":
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size)
        lr = self.optimizers().param_groups[0]["lr"]
        self.log("lr", lr, on_step=True, on_epoch=False, batch_size=batch_size)
        return total

    @staticmethod
    def clip_update(optimizer, norm: float | None) -> None:
        if norm:
            import torch

            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, float(norm))
