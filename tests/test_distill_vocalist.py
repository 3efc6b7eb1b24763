"""The losses on real captured behaviour: a tiny VocaLiST teacher and student (different widths, 8 heads each)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtdistill.distill import MTDLoss, build_loss, cad_loss
from mtdistill.models import VocaLiST, VocaLiSTConfig

TEACHER_D = 48  # head_dim 6 vs the tiny student's 4: the losses must not care


@pytest.fixture(scope="module")
def pair() -> tuple[VocaLiST, VocaLiST, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = VocaLiST.tiny()
    teacher = VocaLiST(VocaLiSTConfig(d_model=TEACHER_D, widths=(4, 8, 8, 16, TEACHER_D)), preset="mtd").eval()
    video = torch.rand(2, 15, 48, 96) * 255
    mel = torch.randn(2, 1, 80, 16)
    labels = torch.tensor([1.0, 0.0])
    return student, teacher, video, mel, labels


@pytest.mark.slow  # ~8 s on an idle 2-core CPU (the first Conv3d backward dominates), 35 s on a loaded one
def test_mtd_uw25_lowers_the_loss_in_three_adam_steps(pair) -> None:
    student, teacher, video, mel, labels = pair
    student = VocaLiST.tiny()
    student.load_state_dict(pair[0].state_dict())
    student.eval()  # dropout off, BN frozen: a fixed objective, so three small steps must go down
    with torch.no_grad():
        teacher_out = teacher(video, mel, capture=True)
    assert torch.isinf(teacher_out.attention_logits["va"][0]).sum() == 2 * 8 * 10  # the VA mask is there
    loss_fn = MTDLoss(weighting="uw", n_weights=25)
    optimizer = torch.optim.Adam([{"params": student.parameters()}, {"params": loss_fn.parameters()}], lr=1e-3)
    history, student_part = [], []
    for _ in range(4):
        total = loss_fn(student(video, mel, capture=True), teacher_out, labels)
        history.append(total.item())
        student_part.append((loss_fn.terms["bce"] + loss_fn.terms["distill"]).item())
        optimizer.zero_grad()
        total.backward()
        assert loss_fn.params.grad is not None and torch.isfinite(loss_fn.params.grad).all()
        assert all(p.grad is None for p in teacher.parameters())
        optimizer.step()
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < history[0], history
    assert student_part[-1] < student_part[0], student_part  # not only the weights: the student learns too
    assert len([k for k in loss_fn.terms if k.startswith(("cad/", "vr/"))]) == 24


def ref_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE with logits written out: -(y log sigmoid(z) + (1 - y) log sigmoid(-z)), mean over the batch."""
    z = logits.double()
    return -(labels * F.logsigmoid(z) + (1 - labels) * F.logsigmoid(-z)).mean()


def ref_kl_mean(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """sum p_t (log p_t - log p_s) over every element / number of elements (KLDivLoss 'mean', as released)."""
    p_t = torch.softmax(teacher_scores.double(), -1)
    p_s = torch.softmax(student_scores.double(), -1)
    return (p_t * (p_t.log() - p_s.log())).sum() / p_t.numel()


def ref_relation(values: torch.Tensor) -> torch.Tensor:
    """V V^T / sqrt(head_dim) of one layer's values (B, H, T, hd)."""
    v = values.double()
    return v @ v.transpose(-1, -2) / v.shape[-1] ** 0.5


def test_every_vocalist_loss_equals_its_formula_on_real_outputs(pair) -> None:
    student, teacher, video, mel, labels = pair
    with torch.no_grad():
        t_out = teacher(video, mel, capture=True)
        s_out = student(video, mel, capture=True)
    bce = ref_bce(s_out.logits, labels)
    # the last Fusion layer's CAD and VR terms, from the captured tensors and the formulas of Eq. 1-2
    cad_f4 = ref_kl_mean(s_out.attention_logits["fusion"][3], t_out.attention_logits["fusion"][3])
    vr_f4 = ref_kl_mean(ref_relation(s_out.values["fusion"][3]), ref_relation(t_out.values["fusion"][3]))
    assert cad_f4 > 0 and vr_f4 > 0

    def value(name: str, **options: object) -> tuple[float, dict[str, float]]:
        loss = build_loss(name, **options)
        total = loss(s_out, t_out if loss.needs_teacher else None, labels)
        assert total.ndim == 0
        return total.item(), {k: v.item() for k, v in loss.terms.items()}

    close = {"rel": 1e-5, "abs": 1e-6}
    assert value("bce")[0] == pytest.approx(bce.item(), **close)

    # KD as released: softmax over the batch at T = 5, T^2 * KL(teacher || student) / B
    t5, s5 = t_out.logits.double() / 5, s_out.logits.double() / 5
    kd = 25 * (torch.softmax(t5, 0) * (torch.log_softmax(t5, 0) - torch.log_softmax(s5, 0))).sum() / len(labels)
    assert value("kd")[0] == pytest.approx((bce + kd).item(), **close)

    # RKD on a pair: both distances normalise to 1 and every triplet angle coincides, so only BCE is left
    assert value("rkd")[0] == pytest.approx(bce.item(), **close)

    # FitNets as released: beta * MSE(student, W teacher + b) on the Fusion output
    fitnets = build_loss("fitnets", teacher_dim=TEACHER_D, student_dim=32)
    w, b = fitnets.regressor.weight.detach().double(), fitnets.regressor.bias.detach().double()
    hint = 100 * ((s_out.hidden["fusion"][-1].double() - (t_out.hidden["fusion"][-1].double() @ w.T + b)) ** 2).mean()
    assert fitnets(s_out, t_out, labels).item() == pytest.approx((bce + hint).item(), **close)

    # MiniLM*: BCE + CAD + VR of the last Fusion layer, uniform weights
    total, terms = value("minilm")
    assert total == pytest.approx((bce + cad_f4 + vr_f4).item(), **close)
    assert terms["cad/fusion/3"] == pytest.approx(cad_f4.item(), **close)
    assert terms["vr/fusion/3"] == pytest.approx(vr_f4.item(), **close)

    # the 24 terms of all 12 layers, one of them checked against the formula; NMTD sums them with BCE
    total, terms = value("nmtd")
    behaviour = [v for k, v in terms.items() if k.startswith(("cad/", "vr/"))]
    assert len(behaviour) == 24 and terms["vr/fusion/3"] == pytest.approx(vr_f4.item(), **close)
    assert total == pytest.approx(bce.item() + sum(behaviour), **close)
    # AW at its initial weights: softmax of 25 equal parameters, 1/25 each
    assert value("aw")[0] == pytest.approx((bce.item() + sum(behaviour)) / 25, **close)
    # UW (Eq. 4) at p = 1: 0.5 L_i + ln 2 for each of the 25 tasks
    assert value("mtd")[0] == pytest.approx(0.5 * (bce.item() + sum(behaviour)) + 25 * math.log(2), **close)

    # the clean VA variant (masked KL) is finite on real -inf logits; the released formula without clamp is not
    assert torch.isfinite(MTDLoss(va_clamp=False)(s_out, t_out, labels))
    assert torch.isnan(cad_loss(s_out.attention_logits["va"][0], t_out.attention_logits["va"][0]))
