"""LightningModule for VocaLiST-family training: from scratch (BCE) or distilled from a frozen teacher (§2.6).

One module serves both: with no teacher it is VocaLiST's own recipe (design.md §3.5); with a teacher it is the MTD loop.
The teacher is deliberately *not* a registered submodule: it stays out of the checkpoints (80 M parameters per
epoch file otherwise), out of the optimizer, out of DDP's gradient buckets and out of ``.train()``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from mtdistill.metrics.f1 import F1_STATS, batch_f1_stats, epoch_f1_from_stats
from mtdistill.models.vocalist import SyncOutput, VocaLiST
from mtdistill.training.checkpoints import ResumableStateMixin, reseed
from mtdistill.training.schedule import EpochStepLR, LRSchedule


def convert_preset(video: Tensor, src: str | None, dst: str | None) -> Tensor:
    """Re-express a (B, 3*T, H, W) window from one input preset in another (design.md §3.3).

    mtd = RGB 0..255, vocalist = BGR [0, 1]. Needed when the official VocaLiST teacher (BGR) teaches a student
    fed the MTD pipeline (RGB): both see the same crops, each in its own convention.
    """
    if src == dst or src is None or dst is None:
        return video
    b, c, h, w = video.shape
    flipped = video.view(b, c // 3, 3, h, w).flip(2).reshape(b, c, h, w)  # RGB <-> BGR inside each frame
    return flipped / 255.0 if dst == "vocalist" else flipped * 255.0


def needs_capture(loss: nn.Module) -> bool:
    """Whether the loss reads behaviour (attention, values, hidden states) and not just the logits."""
    return bool(getattr(loss, "needs_capture", getattr(loss, "needs_teacher", True)))


def param_groups(model: nn.Module, loss: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's groups: the model's trainable weights ("model"), then the loss's own ("loss": UW / AW
    weights, a FitNets regressor) when it has any."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "model"}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    return groups + ([{"params": loss_params, "name": "loss"}] if loss_params else [])


class SyncLightningModule(ResumableStateMixin, pl.LightningModule):
    """Student (or teacher-from-scratch) training with any registered loss.

    Optimizer: one Adam with two param groups, the model and the loss's own parameters (UW/AW weights,
    FitNets regressor), following the same epoch-wise schedule (design.md §2.6).
    """

    def __init__(
        self,
        student: VocaLiST,
        loss: nn.Module,
        cfg: dict[str, Any],
        teacher: VocaLiST | None = None,
        val_losses: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self.val_losses = nn.ModuleDict(val_losses or {})
        for p in self.val_losses.parameters():  # monitoring only: never trained, never in DDP's reducer
            p.requires_grad_(False)
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self._teacher = [teacher] if teacher is not None else []  # a list hides it from nn.Module registration
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.student_capture = needs_capture(loss)
        self.teacher_needed = bool(getattr(loss, "needs_teacher", False)) and teacher is not None
        self.val_teacher_needed = teacher is not None and (
            self.teacher_needed or any(getattr(v, "needs_teacher", True) for v in self.val_losses.values())
        )
        self._val_batch_f1: list[Any] = []
        self.val_f1_of_epoch: dict[int, float] = {}

    # ---- helpers ----
    @property
    def teacher(self) -> VocaLiST | None:
        return self._teacher[0] if self._teacher else None

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        video, mel = batch["video"], batch["mel"]
        labels = batch["label"].float().reshape(-1)
        return video, mel, labels

    @torch.no_grad()
    def teacher_forward(self, video: Tensor, mel: Tensor) -> SyncOutput:
        """Frozen teacher: eval mode, no autograd graph, behaviour captured for the loss."""
        teacher = self.teacher
        assert teacher is not None
        video = convert_preset(video, self.student.preset, teacher.preset)
        return teacher(video, mel, capture=True)

    def student_forward(self, video: Tensor, mel: Tensor, capture: bool) -> SyncOutput:
        out = self.student(video, mel, capture=capture)
        return out if isinstance(out, SyncOutput) else SyncOutput(logits=out)

    # ---- Lightning hooks ----
    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device).eval()

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, EpochStepLR):
            scheduler.set_epoch(epoch)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(epoch)
        if self.teacher is not None:
            self.teacher.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        reseed(self.seed, self.global_rank, self.current_epoch, batch_idx)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        video, mel, labels = self._inputs(batch)
        teacher_out = self.teacher_forward(video, mel) if self.teacher_needed else None
        student_out = self.student_forward(video, mel, capture=self.student_capture)
        total = self.loss(student_out, teacher_out, labels)
        return self.log_train_step(total, labels.shape[0])

    def on_validation_epoch_start(self) -> None:
        self._val_batch_f1 = []
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_val_epoch"):
            dm.set_val_epoch(self.current_epoch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video, mel, labels = self._inputs(batch)
        capture = self.student_capture or len(self.val_losses) > 0
        teacher_out = self.teacher_forward(video, mel) if self.val_teacher_needed else None
        student_out = self.student_forward(video, mel, capture=capture)
        bs = labels.shape[0]
        logits = student_out.logits.float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        self._val_batch_f1.append(batch_f1_stats(logits, labels, self.cfg["_quirks"]))
        metrics = {"val/loss": bce}
        if teacher_out is not None or not getattr(self.loss, "needs_teacher", False):
            metrics["val/total"] = self.loss(student_out, teacher_out, labels)
            for name, value in getattr(self.loss, "terms", {}).items():
                if name not in ("total", "bce"):
                    metrics[f"val/{name}"] = value
        for label, extra in self.val_losses.items():
            metrics[f"val/{label}"] = extra(student_out, teacher_out, labels)
            for name, value in getattr(extra, "terms", {}).items():
                if name not in ("total", "bce"):
                    metrics[f"val/{label}/{name}"] = value
        for name, value in metrics.items():
            self.log(name, value.detach().float(), on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)

    def on_validation_epoch_end(self) -> None:
        rows = [torch.as_tensor(r, dtype=torch.float64) for r in self._val_batch_f1]
        local = torch.stack(rows) if rows else torch.zeros((0, len(F1_STATS)), dtype=torch.float64)
        local = local.to(self.device)
        if self.trainer.world_size > 1:  # DistributedSampler pads ranks to equal batch counts
            local = self.all_gather(local).reshape(-1, len(F1_STATS))
        f1 = epoch_f1_from_stats(local.cpu().numpy(), self.cfg["_quirks"])  # Quirks.f1_mean_of_batches
        if self.trainer.sanity_checking:
            return
        self.val_f1_of_epoch[self.current_epoch] = f1
        self.log("val/f1", f1, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.cfg["optim"]
        groups = param_groups(self.student, self.loss)
        optimizer = torch.optim.Adam(groups, lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"]))
        schedule = LRSchedule(
            schedule=optim["schedule"],
            warmup_epochs=int(optim["warmup_epochs"]),
            step_size=int(optim["step_size"]),
            gamma=float(optim["gamma"]),
            first_iteration_lr_zero=bool(self.cfg["_quirks"].first_iteration_lr_zero),
        )
        scheduler = EpochStepLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        # optim.max_grad_norm (recipe) or the loss's own grad_clip (AW "requires gradient clipping"):
        # the whole update (model + loss weights) is clipped together
        norm = self.cfg["optim"]["max_grad_norm"] or getattr(self.loss, "max_grad_norm", None)
        self.clip_update(optimizer, norm)
