"""The released MTD learning-rate schedule as a closed form (design.md §2.6), and a scheduler that applies it.

The official loop builds GradualWarmup(multiplier=1, total_epoch=10) -> StepLR(20, 0.8) and steps it with the
*epoch number* after every iteration, so the lr is constant inside an epoch:
    lr(e) = lr0 * (e + 1) / 10              for e < 10
    lr(e) = lr0 * 0.8 ** floor((e - 9) / 20) for e >= 10
and the very first iteration of training runs at lr = 0 (the warm-up constructor sets it; ``Quirks``).
Writing it as a function of (epoch, optimizer step) keeps resume exact: the state is two integers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

SCHEDULES = ("warmup_step", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """The schedule's options, with the released values as defaults (design.md §2.6).

    schedule: "warmup_step" (released MTD) | "constant" (VocaLiST's own recipe, design.md §3.5).
    first_iteration_lr_zero: the very first optimizer step runs at lr 0 (``Quirks``).
    """

    schedule: str = "warmup_step"
    warmup_epochs: int = 10
    step_size: int = 20
    gamma: float = 0.8
    first_iteration_lr_zero: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}")

    def lr(self, epoch: int, step: int, base_lr: float) -> float:
        """Learning rate of optimizer step ``step`` (0-based, global) taken during ``epoch``."""
        if self.first_iteration_lr_zero and step == 0:
            return 0.0
        if self.schedule == "constant":
            return base_lr
        return base_lr * warmup_step_factor(epoch, self.warmup_epochs, self.step_size, self.gamma)


def warmup_step_factor(
    epoch: int,
    warmup_epochs: int = LRSchedule.warmup_epochs,
    step_size: int = LRSchedule.step_size,
    gamma: float = LRSchedule.gamma,
) -> float:
    """Spec 2.6: lr multiplier for 0-based ``epoch`` (linear warm-up to 1, then StepLR counted from the warm-up end)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** ((epoch - warmup_epochs + 1) // step_size)


def lr_at(epoch: int, step: int, base_lr: float = 5e-5, **options: Any) -> float:
    """Learning rate of optimizer step ``step`` (0-based, global) taken during ``epoch``; ``options`` are
    the fields of ``LRSchedule``."""
    return LRSchedule(**options).lr(epoch, step, base_lr)


class EpochStepLR(LRScheduler):
    """Stepped after every optimizer step (Lightning ``interval: step``); the lr depends on ``epoch`` only,
    which the training module sets at each epoch start, plus the first-iteration quirk on step 0.

    Every param group (student weights, loss weights) follows the same schedule, as in the released code.
    """

    def __init__(self, optimizer: Optimizer, schedule: LRSchedule | None = None) -> None:
        # plain values in the state (checkpoints), so that they load with torch.load(weights_only=True)
        self.options = asdict(schedule or LRSchedule())
        self.epoch = 0
        super().__init__(optimizer)

    def _lr(self, base_lr: float) -> float:
        # LRScheduler counts calls to step() in last_epoch: here, optimizer steps taken so far
        return LRSchedule(**self.options).lr(self.epoch, self.last_epoch, base_lr)

    def get_lr(self) -> list[float]:
        return [self._lr(base) for base in self.base_lrs]

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` and update the optimizer's lr now, before the epoch's first step."""
        self.epoch = epoch
        for group, lr in zip(self.optimizer.param_groups, [self._lr(b) for b in self.base_lrs], strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}
