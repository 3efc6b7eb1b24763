"""The seed paper's training objective (eq. 1) and the plain baselines for the MulT students.

Every MulT-side loss takes ``(student_out, teacher_out, labels, index=None)``: MulTOutputs (or logit tensors),
labels = 7-class ids (long) for a classifier or float sentiment for a regression head, and ``index`` = dataset
sample indices (CRD's memory rows). ``loss.terms`` holds the detached terms of the last call.
Losses whose parameters depend on the models' shapes build them in ``setup(student_out, teacher_out)``, which the
trainer calls once on a probe batch before creating the optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.distill.registry import MULT, register


def logits_of(out: Any) -> Tensor:
    """The logits of a MulTOutput, or the tensor itself."""
    return out if isinstance(out, Tensor) else out.logits


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """L_c of eq. (1): cross-entropy on the 7 classes; L1 (MulT's MAE) for a one-output regression head."""
    if logits.shape[-1] == 1:
        return F.l1_loss(logits.reshape(-1), labels.float().reshape(-1))
    if labels.dtype not in (torch.long, torch.int32, torch.int64):
        raise UserError("a classifier head needs integer class ids as labels (the batch's 'class7')")
    return F.cross_entropy(logits, labels)


def total_loss(ce: Tensor, kd: Tensor | None, alpha: float, beta: float) -> Tensor:
    """Eq. (1): Loss = alpha * L_c + beta * L_KD."""
    return alpha * ce if kd is None else alpha * ce + beta * kd


def hinton_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD (RepDistiller form, design.md §M3): T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), batch mean."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


class MulTObjective(nn.Module):
    """Base: alpha * L_c + beta * L_KD (eq. 1); subclasses implement ``distill``."""

    needs_teacher = True
    needs_capture = True

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise UserError(f"loss weights alpha={alpha}, beta={beta} must be non-negative")
        self.alpha, self.beta = float(alpha), float(beta)
        self.terms: dict[str, Tensor] = {}

    def setup(self, student_out: Any, teacher_out: Any) -> None:
        """Build shape-dependent parts from one probe batch (no-op by default)."""

    def capture_names(self, side: str) -> bool | set[str]:
        """Transformers whose behaviour the loss reads on ``side`` ("student" | "teacher"); True = all of them.
        The trainer passes this as the models' ``capture`` so the others run the fast path."""
        return True

    def distill(self, student_out: Any, teacher_out: Any, labels: Tensor, index: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, student_out: Any, teacher_out: Any, labels: Tensor, index: Tensor | None = None) -> Tensor:
        self.terms = {}  # distill() may add per-pair terms
        ce = classification_loss(logits_of(student_out), labels)
        kd = None
        if self.needs_teacher:
            if teacher_out is None:
                raise UserError(f"loss {type(self).__name__} needs a teacher; set teacher: in the recipe")
            kd = self.distill(student_out, teacher_out, labels, index)
        total = total_loss(ce, kd, self.alpha, self.beta)
        self.terms.update(ce=ce.detach(), total=total.detach())
        if kd is not None:
            self.terms["kd"] = kd.detach()
        return total


@register("mult_ce", family=MULT)
class CEOnly(MulTObjective):
    """The student (or teacher) without distillation: alpha * L_c."""

    needs_teacher = False
    needs_capture = False

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha=alpha, beta=0.0)


@register("mult_kd", family=MULT)
class LogitKD(MulTObjective):
    """alpha * L_c + beta * T^2 KL on the logits (Hinton KD; RepDistiller uses alpha=0.1, beta=0.9, T=4)."""

    needs_capture = False

    def __init__(self, alpha: float = 0.1, beta: float = 0.9, temperature: float = 4.0) -> None:
        super().__init__(alpha, beta)
        if temperature <= 0:
            raise UserError(f"temperature={temperature} must be positive")
        self.temperature = float(temperature)

    def distill(self, student_out: Any, teacher_out: Any, labels: Tensor, index: Tensor | None) -> Tensor:
        s, t = logits_of(student_out), logits_of(teacher_out)
        if s.shape != t.shape:
            raise UserError(f"KD needs equal logit shapes, got student {tuple(s.shape)} and teacher {tuple(t.shape)}")
        return hinton_kd(s, t.detach(), self.temperature)


def select_layers(n_student: int, n_teacher: int, layers: str | list[int]) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs: "all" (equal depth), "last", or a list of layer indices."""
    if layers == "last":
        return [(n_student - 1, n_teacher - 1)]
    if n_student != n_teacher:
        raise UserError(f"student has {n_student} layers and teacher {n_teacher}; use layers: last for unequal depth")
    if layers == "all":
        return [(i, i) for i in range(n_student)]
    if isinstance(layers, (list, tuple)) and all(isinstance(i, int) and -n_student <= i < n_student for i in layers):
        return [(i % n_student, i % n_student) for i in layers]
    raise UserError(f"layers={layers!r} must be 'all', 'last' or a list of layer indices below {n_student}")


def parse_pairs(pairs: Any) -> tuple[tuple[str, str], ...]:
    """[[student_name, teacher_name], ...] or ["lv", ...] (same name on both sides) -> tuple of pairs."""
    out = []
    for p in pairs or ():
        if isinstance(p, str):
            out.append((p, p))
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            out.append((str(p[0]), str(p[1])))
        else:
            raise UserError(f"pair {p!r} must be a transformer name or [student_name, teacher_name]")
    if not out:
        raise UserError("this loss needs transformer pairs (set the recipe's configuration: or loss.pairs)")
    return tuple(out)


def pair_key(pair: tuple[str, str]) -> str:
    return f"{pair[0]}__{pair[1]}"


def get_maps(out: Any, attr: str, name: str, side: str) -> list[Tensor]:
    maps = getattr(out, attr, None)
    if not isinstance(maps, dict) or name not in maps:
        have = sorted(maps) if isinstance(maps, dict) else []
        raise UserError(f"{side} has no captured transformer {name!r} (has {have}); check the recipe's pairs")
    return maps[name]
