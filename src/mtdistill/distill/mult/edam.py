"""EDAM: Entropy Distillation in Attention Maps (seed paper 002, eq. 10-13), with EDAM-S and EDAM-T.

Every row of an attention map is a distribution over keys. For a transformer pair the loss is the cross-entropy
between teacher and student rows at temperature t, averaged over rows and layers (eq. 12), then over pairs.
The paper leaves choices open (design.md §M5); they are settings:
- ``direction``: "teacher_target" = -P^T log P^S (the spec's reading; equals KL(P^T||P^S) + H(P^T)),
  "paper_literal" = -P^S log P^T (eq. 13 read with a = student, b = teacher);
- ``tau_squared``: multiply by t^2 (Hinton) or not; ``heads``: "per_head" or "mean" (needed when head counts
  differ); ``layers``: "all" | "last" | [indices]; ``pair_reduce``: "mean" (paper) | "sum".
Masked entries (-inf logits of MulT's offset mask) carry zero probability and contribute nothing.

- EDAM-S: student adapters give the proxies the teacher's lengths, so maps match and L_EDAM applies directly.
- EDAM-T: learnable Linear layers resample the teacher map to the student's (Tq, Tk) (key axis, then query axis),
  initialised as linear interpolation and trained with the student; the student's mask is applied before the
  t-softmax so the target never puts mass where the student cannot.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.distill.mult.objective import MulTObjective, get_maps, pair_key, parse_pairs, select_layers
from mtdistill.distill.registry import MULT, register

DIRECTIONS = ("teacher_target", "paper_literal")
HEAD_MODES = ("per_head", "mean")


def temp_log_softmax(logits: Tensor, tau: float) -> Tensor:
    """Eq. (11) in log space: log temp_softmax(X, t) = log_softmax(X / t) over the key axis."""
    return torch.log_softmax(logits.float() / tau, dim=-1)


def attention_distribution(logits: Tensor, tau: float, heads: str) -> tuple[Tensor, Tensor]:
    """Eq. (10): DisLvl = temp_softmax(Q K^T / sqrt(d_k), t) -> (probabilities, log-probabilities).

    heads="mean" averages the per-head distributions (B, H, Tq, Tk) -> (B, 1, Tq, Tk).
    """
    logp = temp_log_softmax(logits, tau)
    if heads == "per_head":
        return logp.exp(), logp
    # log of the head-mean computed as logsumexp - log H: no underflow to log 0 on live entries
    log_mean = torch.logsumexp(logp, dim=1, keepdim=True) - math.log(logp.shape[1])
    return log_mean.exp(), log_mean


def edam_cross_entropy(target_p: Tensor, log_q: Tensor) -> Tensor:
    """Eq. (13) summed over keys: F = -sum_j a_j log b_j, with 0 * log 0 = 0; returns one value per row."""
    # zero log_q *before* the product: -p * (-inf) would give NaN gradients when the target is learned (EDAM-T)
    safe_log_q = torch.where(target_p > 0, log_q, torch.zeros_like(log_q))
    return (-target_p * safe_log_q).sum(dim=-1)


def edam_pair_loss(
    student_logits: list[Tensor],
    teacher_logits: list[Tensor],
    layer_pairs: list[tuple[int, int]],
    tau: float = 1.0,
    heads: str = "per_head",
    direction: str = "teacher_target",
) -> Tensor:
    """Eq. (12): (1 / (m l)) sum_layers sum_rows F(student row, teacher row); also averaged over batch and heads."""
    losses = []
    for ls, lt in layer_pairs:
        zs, zt = student_logits[ls], teacher_logits[lt]
        if zs.shape[-2:] != zt.shape[-2:]:
            raise UserError(
                f"attention maps differ: student {tuple(zs.shape[-2:])} vs teacher {tuple(zt.shape[-2:])};"
                " use EDAM-S adapters (proxy_lengths = teacher lengths) or edam_t"
            )
        if heads == "per_head" and zs.shape[1] != zt.shape[1]:
            raise UserError(f"student has {zs.shape[1]} heads and teacher {zt.shape[1]}; set heads: mean")
        p_s, logp_s = attention_distribution(zs, tau, heads)
        p_t, logp_t = attention_distribution(zt, tau, heads)
        if direction == "teacher_target":
            if bool(((p_t > 0) & torch.isneginf(logp_s)).any()):
                raise UserError("teacher attends where the student is masked; paired maps need identical masks")
            rows = edam_cross_entropy(p_t, logp_s)
        else:
            rows = edam_cross_entropy(p_s, logp_t.masked_fill(torch.isneginf(logp_t) & (p_s > 0), -1e4))
        losses.append(rows.mean())
    return torch.stack(losses).mean()


def interpolation_matrix(n_out: int, n_in: int) -> Tensor:
    """(n_out, n_in) linear-interpolation weights (align_corners=True), EDAM-T's initial resampler."""
    if n_in == 1 or n_out == 1:
        return torch.full((n_out, n_in), 1.0 / n_in)
    eye = torch.eye(n_in)[None]  # (1, n_in, n_in): interpolate every basis vector
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=True)[0].T.contiguous()


class MapResampler(nn.Module):
    """EDAM-T: teacher map (B, H, Tq_T, Tk_T) -> (B, H, Tq_S, Tk_S) with two learned Linear layers."""

    def __init__(self, teacher_shape: tuple[int, int], student_shape: tuple[int, int]) -> None:
        super().__init__()
        (tq_t, tk_t), (tq_s, tk_s) = teacher_shape, student_shape
        self.key = nn.Linear(tk_t, tk_s, bias=False)
        self.query = nn.Linear(tq_t, tq_s, bias=False)
        with torch.no_grad():
            self.key.weight.copy_(interpolation_matrix(tk_s, tk_t))
            self.query.weight.copy_(interpolation_matrix(tq_s, tq_t))

    def forward(self, teacher_logits: Tensor, student_mask: Tensor) -> Tensor:
        z = teacher_logits.float()
        # masked (-inf) teacher entries become the row's smallest finite logit: "unlikely", but finite for Linear
        finite = torch.isfinite(z)
        row_min = torch.where(finite, z, torch.full_like(z, float("inf"))).amin(dim=-1, keepdim=True)
        z = torch.where(finite, z, row_min)
        z = self.key(z)  # (B, H, Tq_T, Tk_S)
        z = self.query(z.transpose(-1, -2)).transpose(-1, -2)  # (B, H, Tq_S, Tk_S)
        return z.masked_fill(student_mask, float("-inf"))


@register("edam", family=MULT)
class EDAMLoss(MulTObjective):
    """alpha * L_c + beta * mean over pairs of L_EDAM (eq. 12); maps must have equal shapes (EDAM-S)."""

    def __init__(
        self,
        pairs: Any = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        tau: float = 1.0,
        tau_squared: bool = False,
        heads: str = "per_head",
        layers: Any = "all",
        pair_reduce: str = "mean",
        direction: str = "teacher_target",
    ) -> None:
        super().__init__(alpha, beta)
        if tau <= 0:
            raise UserError(f"tau={tau} must be positive")
        if heads not in HEAD_MODES:
            raise UserError(f"heads={heads!r} must be one of {HEAD_MODES}")
        if direction not in DIRECTIONS:
            raise UserError(f"direction={direction!r} must be one of {DIRECTIONS}")
        if pair_reduce not in ("mean", "sum"):
            raise UserError(f"pair_reduce={pair_reduce!r} must be 'mean' or 'sum'")
        self.pairs = parse_pairs(pairs)
        self.tau, self.tau_squared, self.heads, self.layers = float(tau), bool(tau_squared), heads, layers
        self.pair_reduce, self.direction = pair_reduce, direction

    def capture_names(self, side: str) -> set[str]:
        return {p[0] if side == "student" else p[1] for p in self.pairs}

    def teacher_maps(self, pair: tuple[str, str], teacher: list[Tensor], student: list[Tensor]) -> list[Tensor]:
        return [t.detach() for t in teacher]  # the teacher is frozen: no gradient ever reaches it

    def distill(self, student_out: Any, teacher_out: Any, labels: Tensor, index: Tensor | None) -> Tensor:
        per_pair = []
        for pair in self.pairs:
            s_maps = get_maps(student_out, "attention_logits", pair[0], "student")
            t_maps = get_maps(teacher_out, "attention_logits", pair[1], "teacher")
            layer_pairs = select_layers(len(s_maps), len(t_maps), self.layers)
            t_maps = self.teacher_maps(pair, t_maps, s_maps)
            loss = edam_pair_loss(s_maps, t_maps, layer_pairs, self.tau, self.heads, self.direction)
            per_pair.append(loss)
            self.terms[f"edam/{pair_key(pair)}"] = loss.detach()
        stacked = torch.stack(per_pair)
        out = stacked.mean() if self.pair_reduce == "mean" else stacked.sum()
        return out * self.tau**2 if self.tau_squared else out


@register("edam_s", family=MULT)
class EDAMSLoss(EDAMLoss):
    """EDAM-S: EDAM on maps made equal in shape by the student's length adapters (recipe sets proxy_lengths)."""


@register("edam_t", family=MULT)
class EDAMTLoss(EDAMLoss):
    """EDAM-T: the teacher maps are resampled to the student's shape by learned Linear layers (built in setup)."""

    def __init__(self, freeze_after: int | None = None, **options: Any) -> None:
        """``options``: those of `EDAMLoss`."""
        super().__init__(**options)
        self.resamplers = nn.ModuleDict()
        self.freeze_after = freeze_after  # training steps after which the resamplers stop learning (drift guard)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def setup(self, student_out: Any, teacher_out: Any) -> None:
        for pair in self.pairs:
            s_maps = get_maps(student_out, "attention_logits", pair[0], "student")
            t_maps = get_maps(teacher_out, "attention_logits", pair[1], "teacher")
            for ls, lt in select_layers(len(s_maps), len(t_maps), self.layers):
                key = f"{pair_key(pair)}__{ls}_{lt}"
                if key not in self.resamplers:
                    self.resamplers[key] = MapResampler(tuple(t_maps[lt].shape[-2:]), tuple(s_maps[ls].shape[-2:]))

    def teacher_maps(self, pair: tuple[str, str], teacher: list[Tensor], student: list[Tensor]) -> list[Tensor]:
        if len(self.resamplers) == 0:
            raise UserError("edam_t was not set up; the trainer must call loss.setup(student_out, teacher_out) first")
        frozen = self.freeze_after is not None and int(self.steps) >= self.freeze_after
        out = list(teacher)
        for ls, lt in select_layers(len(student), len(teacher), self.layers):
            res = self.resamplers[f"{pair_key(pair)}__{ls}_{lt}"]
            mask = torch.isneginf(student[ls][:1, :1])  # (1, 1, Tq_S, Tk_S): the offset mask is per shape
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                # the gradient trains the resampler, never the frozen teacher: detach its input only
                out[lt] = res(teacher[lt].detach(), mask)
        return out

    def distill(self, student_out: Any, teacher_out: Any, labels: Tensor, index: Tensor | None) -> Tensor:
        if self.training:
            self.steps += 1
        return super().distill(student_out, teacher_out, labels, index)
