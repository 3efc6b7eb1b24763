"""Transformer behaviour (CAD, VR) and the KL losses that make a student mimic it (paper 001, Eq. 1-2).

Everything here works on captured tensors, never on models: ``attention_logits`` (B, H, Tq, Tk) are the
pre-softmax logits, already scaled by each model's own head_dim**-0.5 and holding -inf at masked entries;
``values`` (B, H, Tk, head_dim) are V after the in-projection. Teacher head h is matched to student head h.

The released MTD code computes the student's log-probabilities as ``softmax(x).log()``, reduces
``nn.KLDivLoss`` with 'mean' (over all B*H*Tq*Tk elements) and clamps the VA CAD logits at 1e-5 before the
softmax. Those are the defaults (``Quirks.kl_log_of_softmax``, ``kl_reduction``, ``va_cad_clamp`` of
``mtdistill.core.quirks``); ``log_of_softmax=False`` takes ``log_softmax`` instead and ``masked=True`` gives the
clean VA variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import FAITHFUL, KL_REDUCTIONS

VA_CLAMP_MIN = 1e-5
"""The released code clamps VA attention logits (teacher and student) at this minimum (design.md §2.3)."""


class CapturedBehaviour(Protocol):
    """What the losses read from a model's ``capture=True`` output (``SyncOutput`` satisfies it)."""

    logits: Tensor
    attention_logits: Mapping[str, Sequence[Tensor]]
    values: Mapping[str, Sequence[Tensor]]
    hidden: Mapping[str, Sequence[Tensor]]
    pooled: Tensor


def cross_attention_distribution(logits: Tensor, tau: float = 1.0, clamp_min: float | None = None) -> Tensor:
    """Eq. 1, CAD = softmax(Q K^T / sqrt(d_q)) over the keys (last axis), at temperature ``tau``.

    ``logits`` are already Q K^T / sqrt(d_q) (+ mask). ``clamp_min`` reproduces the released VA hack: the
    logits are clamped *before* the softmax, which removes the -inf entries and every negative logit.
    """
    if clamp_min is not None:
        logits = logits.clamp(min=clamp_min)
    return torch.softmax(logits.float() / tau, dim=-1)


def value_relation_logits(values: Tensor) -> Tensor:
    """Eq. 1, the VR logits V V^T / sqrt(d_v) (float32); d_v is the model's own head_dim."""
    values = values.float()
    return values @ values.transpose(-1, -2) / math.sqrt(values.shape[-1])


def value_relation(values: Tensor, tau: float = 1.0) -> Tensor:
    """Eq. 1, VR = softmax(V V^T / sqrt(d_v)) over the last axis; d_v is the model's own head_dim."""
    return torch.softmax(value_relation_logits(values) / tau, dim=-1)


def _check_reduction(reduction: str) -> None:
    if reduction not in KL_REDUCTIONS:
        raise UserError(f"unknown KL reduction {reduction!r}; use one of {', '.join(KL_REDUCTIONS)}")


def _check_pair(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise UserError(
            f"student and teacher {what} shapes differ ({tuple(student.shape)} vs {tuple(teacher.shape)}); "
            "both models need the same number of heads and the same sequence lengths"
        )


def student_log_probs(probs_logits: Tensor, log_of_softmax: bool = FAITHFUL.kl_log_of_softmax) -> Tensor:
    """The student's log-probabilities over the last axis from its (already scaled, clamped) logits.

    ``log_of_softmax`` (``Quirks.kl_log_of_softmax``, the released code): ``softmax(x).log()``, which is -inf
    wherever the softmax underflows to 0 (a logit about 104 below the row's maximum in float32). False:
    ``log_softmax(x)``, finite for finite logits.
    """
    logits = probs_logits.float()
    if log_of_softmax:
        return torch.softmax(logits, dim=-1).log()
    return torch.log_softmax(logits, dim=-1)


def kl_teacher_student_log(student_log_probs: Tensor, teacher_probs: Tensor, reduction: str = "mean") -> Tensor:
    """Eq. 2, D_KL(teacher || student) = ``KLDivLoss(reduction)(student_log_probs, teacher)``.

    'mean' divides the summed KL by every element (B*H*Tq*Tk, as released); 'batchmean' divides by the number
    of distributions (rows, B*H*Tq), i.e. it is Tk times larger. A -inf student log-probability gives inf where
    the teacher's probability is positive and NaN (0 * -inf) where it is 0, as in the release.
    """
    _check_reduction(reduction)
    _check_pair(student_log_probs, teacher_probs, "distribution")
    pointwise = F.kl_div(student_log_probs, teacher_probs, reduction="none")
    denominator = pointwise.numel() if reduction == "mean" else pointwise[..., 0].numel()
    return pointwise.sum() / denominator


def kl_teacher_student(student_probs: Tensor, teacher_probs: Tensor, reduction: str = "mean") -> Tensor:
    """Eq. 2, D_KL(teacher || student) exactly as released: ``KLDivLoss(reduction)(student.log(), teacher)``.

    Note the log of a softmax, not log_softmax: a zero student probability where the teacher is also zero gives
    0 * -inf = NaN, as in the release (``Quirks.kl_log_of_softmax``; see ``kl_teacher_student_log``).
    """
    return kl_teacher_student_log(student_probs.log(), teacher_probs, reduction)


def masked_kl_teacher_student(
    student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Eq. 2 without the VA clamp: D_KL(teacher || student) over the unmasked (finite) entries only.

    Both distributions are taken with the mask intact (log_softmax for the student), and entries that are
    -inf in either model's logits contribute nothing. 'mean' divides by the number of unmasked entries,
    'batchmean' by the number of rows, so for an unmasked block both agree with ``kl_teacher_student``.
    """
    _check_reduction(reduction)
    _check_pair(student_logits, teacher_logits, "attention logits")
    student_logits, teacher_logits = student_logits.float() / tau, teacher_logits.float() / tau
    valid = torch.isfinite(student_logits) & torch.isfinite(teacher_logits)
    student_log_probs = torch.log_softmax(student_logits, dim=-1)
    teacher_log_probs = torch.log_softmax(teacher_logits, dim=-1)
    # where() on the *inputs* too, so masked entries give neither NaN values nor NaN gradients
    safe_student = torch.where(valid, student_log_probs, torch.zeros_like(student_log_probs))
    safe_teacher = torch.where(valid, teacher_log_probs, torch.zeros_like(teacher_log_probs))
    pointwise = torch.where(valid, safe_teacher.exp() * (safe_teacher - safe_student), torch.zeros_like(safe_student))
    denominator = valid.sum() if reduction == "mean" else valid[..., 0].numel()
    return pointwise.sum() / denominator


def cad_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float = 1.0,
    reduction: str = FAITHFUL.kl_reduction,
    clamp: bool = False,
    masked: bool = False,
    log_of_softmax: bool = FAITHFUL.kl_log_of_softmax,
) -> Tensor:
    """Eq. 2, L_CAD = tau^2 * D_KL(CAD_t || CAD_s) for one layer, all heads matched head to head.

    ``clamp``: the released VA hack (logits of both models clamped at 1e-5 before the softmax).
    ``masked``: the clean alternative, a KL that ignores -inf entries. Neither: the plain released formula.
    ``log_of_softmax``: the student's log-probabilities as ``softmax().log()`` (released) or ``log_softmax``.
    """
    if clamp and masked:
        raise UserError("cad_loss: choose either clamp (released VA hack) or masked (clean KL), not both")
    teacher_logits = teacher_logits.detach()
    if masked:
        return masked_kl_teacher_student(student_logits, teacher_logits, tau, reduction) * tau**2
    clamp_min = VA_CLAMP_MIN if clamp else None
    teacher_probs = cross_attention_distribution(teacher_logits, tau, clamp_min)
    if clamp_min is not None:
        student_logits = student_logits.clamp(min=clamp_min)
    log_probs = student_log_probs(student_logits.float() / tau, log_of_softmax)
    return kl_teacher_student_log(log_probs, teacher_probs, reduction) * tau**2


def vr_loss(
    student_values: Tensor,
    teacher_values: Tensor,
    tau: float = 1.0,
    reduction: str = FAITHFUL.kl_reduction,
    log_of_softmax: bool = FAITHFUL.kl_log_of_softmax,
) -> Tensor:
    """Eq. 2, L_VR = tau^2 * D_KL(VR_t || VR_s) for one layer; each model uses its own head_dim."""
    if student_values.shape[:-1] != teacher_values.shape[:-1]:
        raise UserError(
            f"student and teacher value shapes differ ({tuple(student_values.shape)} vs "
            f"{tuple(teacher_values.shape)}); both models need the same number of heads and sequence lengths"
        )
    teacher_probs = value_relation(teacher_values.detach(), tau)
    log_probs = student_log_probs(value_relation_logits(student_values) / tau, log_of_softmax)
    return kl_teacher_student_log(log_probs, teacher_probs, reduction) * tau**2
